"""The command line: every stage of the loop from a shell, reading and writing files.

Each subcommand reads files (TIFF stacks, annotation folders, model folders) and writes files
(model folders, annotation folders, TIFF or Zarr predictions, CSV / JSON reports), so a whole
loop runs from a shell script::

    biodatacentric pretrain "stacks/*.tif" --out models/mae
    biodatacentric select "stacks/*.tif" --mae models/mae --k 25 --out annotate/core
    #   ... a person paints annotate/core/masks/<id>.tif in napari or Fiji ...
    biodatacentric segment annotate/core --mae models/mae --out models/M0
    biodatacentric hunt "stacks/*.tif" --model models/M0 --n 3 --exclude annotate/core --out annotate/round1
    #   ... the person corrects the three predicted masks ...
    biodatacentric segment annotate/round1 --fine-tune models/M0 --replay annotate/core --out models/M1
    biodatacentric predict new/stack.tif --model models/M1 --out results/stack_pred.tif
    biodatacentric monitor new/stack.tif --predictions results/stack_pred.tif \\
        --references annotate/core --out results/quality.csv

``biodatacentric plan "stacks/*.tif" --time-budget 10min`` prints settings for every stage
chosen from the data and this machine; ``biodatacentric rank "new/*.tif" --models models/``
orders saved segmenters by their fit to new stacks. ``biodatacentric demo`` runs the whole
loop on the bundled sample (``--time-budget 5min`` plans it first). ``--help`` after any
subcommand lists its options.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tifffile

from . import DatasetAuditor, KCoverSelector, MAEPretrainer, MCDropoutHunter, RCAMonitor, TransUNetSegmenter
from ._io import atomic_write, atomic_write_text
from .assess.audit import MOST_EXCLUDED, AuditWarning
from ._version import __version__
from .data import Patches, fingerprint
from .data._paths import _expand_paths
from .data.writers import check_output_suffix
from .demo import run_demo
from .plan import plan
from .rank import rank_models
from .parallel import output_name

__all__ = ["main", "build_parser"]

_EPILOG = ("Each stage reads and writes plain files; see 'biodatacentric COMMAND --help'. "
           "Documentation: the docs/ folder of the project (guide/cli).")


class UsageError(ValueError):
    """A command line that cannot run as given (printed as one ``error:`` line, exit status 2)."""


def _say(text: str) -> None:
    print(text, flush=True)


def _patches(images: Sequence[str], axes: str, patch: int, masks: str | None = None):
    paths: Any = list(images) if len(images) > 1 else images[0]
    return Patches.from_tiff(paths, axes=axes, patch_shape=(patch, patch), masks=masks)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction between 0 and 1 (e.g. 0.5 for half)")
    return value


def _existing_model(path: str, what: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UsageError(f"{what} {folder} is not a saved model folder (no config.json); "
                         f"pass the folder written by 'biodatacentric {'pretrain' if what == '--mae' else 'segment'}'")
    return folder


def _timed(name: str):
    class _T:
        def __enter__(self) -> "_T":
            self.t0 = time.perf_counter()
            _say(f"{name} ...")
            return self

        def __exit__(self, *exc: Any) -> None:
            if exc[0] is None:
                _say(f"{name}: done in {time.perf_counter() - self.t0:.1f} s")
    return _T()


# ---------------------------------------------------------------------- subcommands
def _cmd_pretrain(args: argparse.Namespace) -> int:
    patches = _patches(args.images, args.axes, args.patch)
    _say(f"{len(patches)} patches of {args.patch}x{args.patch} from {patches.n_sources} file(s)")
    mae = MAEPretrainer(preset=args.preset, max_epochs=args.epochs, random_state=args.seed)
    with _timed("MAE pretraining"):
        mae.fit(patches)
    folder = mae.save(args.out)
    _say(f"MAE saved to {folder}")
    if args.embeddings:
        emb = mae.transform(patches)
        np.save(args.embeddings, emb)
        _say(f"embeddings {emb.shape} saved to {args.embeddings}")
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    mae = MAEPretrainer.load(_existing_model(args.mae, "--mae"))
    patch = args.patch or int(mae.img_size_)
    patches = _patches(args.images, args.axes, patch)
    emb = mae.transform(patches)
    exclude = None
    if not args.no_audit:
        exclude = _audit_exclude(args, patches, emb)
    sel = KCoverSelector(n_select=args.k, random_state=args.seed).fit(emb, exclude=exclude,
                                                                   groups=patches.index["source"])
    out = patches[sel.selected_indices_].export(args.out, on_existing="keep")
    _say(f"core set of {args.k} patches exported to {out}; paint each mask as "
         f"{out}/masks/<id>.tif (same name as its image), then run 'biodatacentric segment {out} ...'")
    return 0


def _audit_exclude(args: argparse.Namespace, patches: Patches, emb: np.ndarray) -> np.ndarray:
    """The audit's ``exclude_``, or a UsageError saying why when it would exclude more than
    ``--max-excluded`` of the patches (by default half: never more without being told)."""
    with warnings.catch_warnings():   # the reason is printed below (or is the error), not as a warning
        warnings.simplefilter("ignore", AuditWarning)
        audit = DatasetAuditor(duplicate_threshold=args.duplicate_threshold, exclude_checks=tuple(args.audit_exclude),
                               random_state=args.seed).fit(patches, embeddings=emb)
    exclude = audit.exclude_
    share = float(exclude.mean())
    _say("audit: " + ", ".join(f"{r['check']}={r['flagged']}" for r in audit.summary())
         + f"; {int(exclude.sum())} of {len(patches)} patches ({100 * share:.0f}%) not offered for annotation"
         + f" (excluded checks: {' '.join(args.audit_exclude) or 'none'})")
    reason = audit.most_excluded_reason(MOST_EXCLUDED)
    if reason is None:
        return exclude
    if share > args.max_excluded:
        raise UsageError(
            f"{reason} Nothing was exported. The command line never excludes more than "
            f"{100 * args.max_excluded:.0f}% of the patches unless told: keep near-duplicates in "
            "(--audit-exclude blank saturated blurry), raise --duplicate-threshold (e.g. 0.999), "
            f"skip the audit (--no-audit), or accept it with --max-excluded {min(1.0, share + 0.05):.2f}")
    _say(f"audit: excluding {100 * share:.0f}% of the patches, more than {100 * MOST_EXCLUDED:.0f}%, "
         f"because --max-excluded {args.max_excluded:g} allows it. {reason}")
    return exclude


def _cmd_segment(args: argparse.Namespace) -> int:
    annotated = Patches.concat([Patches.read_annotations(a) for a in args.annotations])
    if args.fine_tune:
        seg = TransUNetSegmenter.load(_existing_model(args.fine_tune, "--fine-tune"))
        replay = (Patches.concat([Patches.read_annotations(a) for a in args.replay]) if args.replay else None)
        with _timed(f"fine-tuning on {len(annotated)} patches"
                    + (f" with {len(replay)} replayed" if replay is not None else "")):
            seg.fine_tune(annotated, replay=replay, max_epochs=args.epochs)
    else:
        encoder = MAEPretrainer.load(_existing_model(args.mae, "--mae")).encoder_ if args.mae else None
        kwargs: dict[str, Any] = dict(encoder=encoder, random_state=args.seed)
        if args.epochs is not None:
            kwargs["max_epochs"] = args.epochs
        if args.preset is not None:
            kwargs["preset"] = args.preset
        seg = TransUNetSegmenter(**kwargs)
        with _timed(f"training on {len(annotated)} annotated patches"):
            seg.fit(annotated)
    folder = seg.save(args.out)
    _say(f"segmenter saved to {folder}")
    return 0


def _annotated_positions(folders: Sequence[str]) -> set[tuple[str, int, int, int]]:
    seen = set()
    for folder in folders:
        prov = Patches.read_annotations(folder).provenance()
        seen.update((str(Path(s).resolve()), int(z), int(y), int(x)) for s, z, y, x in prov)
    return seen


def _cmd_hunt(args: argparse.Namespace) -> int:
    seg = TransUNetSegmenter.load(_existing_model(args.model, "--model"))
    patches = _patches(args.images, args.axes, int(seg.patch_shape_[0]))
    done = _annotated_positions(args.exclude)
    prov = patches.provenance()
    exclude = np.array([(str(Path(s).resolve()), int(z), int(y), int(x)) in done for s, z, y, x in prov])
    if done:
        _say(f"{int(exclude.sum())} patches already annotated are not offered again")
    hunter = MCDropoutHunter(seg, n_samples=args.samples, random_state=args.seed)
    with _timed(f"scoring {len(patches)} patches with {args.samples} samples (flips/rotations, MC dropout)"):
        hunter.fit(patches)
    picks = hunter.select(args.n, exclude=exclude, diversity="one_per_slice")
    critical = patches[picks]
    out = critical.export(args.out, masks=seg.predict(critical), mask_origin=f"prediction {Path(args.model).name}",
                          on_existing="keep")
    _say(f"{args.n} critical patches exported to {out} with the model's masks to correct; then run "
         f"'biodatacentric segment {out} --fine-tune {args.model} --replay ... --out ...'")
    return 0


def _expand(images: Sequence[str]) -> list[str]:
    """File names and quoted patterns -> file names (an existing name is taken literally)."""
    return [p for item in images for p in _expand_paths(item)]


def _outputs(images: Sequence[str], out: str) -> list[Path]:
    """One output path per input: ``out`` itself for one input with a file suffix, else a folder."""
    target = Path(out)
    if len(images) == 1 and target.suffix:
        check_output_suffix(target, name="--out")
        return [target]
    if target.suffix.lower() in (".tif", ".tiff"):
        raise UsageError(f"--out {out} names one file but {len(images)} images were given; "
                         "pass a folder")

    return [target / f"{output_name(img, i)}_pred.tif" for i, img in enumerate(images)]


def _cmd_predict(args: argparse.Namespace) -> int:
    seg = TransUNetSegmenter.load(_existing_model(args.model, "--model"))
    images = _expand(args.images)
    for image, target in zip(images, _outputs(images, args.out)):
        target.parent.mkdir(parents=True, exist_ok=True)
        with _timed(f"segmenting {image}"):
            seg.predict_image(image, axes=args.axes, out=target, overwrite=args.overwrite,
                              return_proba=args.proba)
        _say(f"wrote {target}")
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    images, predictions = _expand(args.images), _expand(args.predictions)
    if len(predictions) != len(images):
        raise UsageError(f"{len(images)} images but {len(predictions)} --predictions; "
                         "give one prediction per image, in the same order")
    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise UsageError(f"--out {out} must end in .csv or .json")
    refs = Patches.concat([Patches.read_annotations(a) for a in args.references])
    mon = RCAMonitor(random_state=args.seed).fit(refs)
    rows = []
    for image, pred in zip(images, predictions):
        img, mask = tifffile.imread(image), tifffile.imread(pred)
        axes = "ZYX" if img.ndim == 3 else "YX"
        res = mon.score(img, mask, axes=axes)
        rows.append({"image": image, "prediction": pred, "estimated_dice": round(float(res["estimated_dice"]), 4),
                     "passed": bool(res["passed"])})
        _say(f"{image}: estimated Dice {res['estimated_dice']:.3f} -> {'pass' if res['passed'] else 'FAIL'}")
    out.parent.mkdir(parents=True, exist_ok=True)

    if out.suffix.lower() == ".json":
        atomic_write_text(out, json.dumps(rows, indent=2) + "\n")
    else:
        def write(p: Path) -> None:
            with open(p, "w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        atomic_write(out, write)
    _say(f"report written to {out}")
    return 0


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    fp = fingerprint(_patches(args.images, args.axes, args.patch), max_patches=args.sample)
    _say(str(fp))
    if args.out:
        _say(f"written to {fp.save(args.out)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(data=args.data, out=args.out, seed=args.seed, patch_size=args.patch_size, quick=args.quick,
             time_budget=args.time_budget, runs_file=args.runs)
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    the_plan = plan(_patches(args.images, args.axes, args.patch), time_budget=args.time_budget,
                    device=args.device, annotation_budget=args.annotation_budget, runs=args.runs)
    _say(str(the_plan))
    if args.out:
        _say(f"written to {the_plan.save(args.out)}")
    return 0


def _cmd_rank(args: argparse.Namespace) -> int:
    ranking = rank_models(args.models, _patches(args.images, args.axes, args.patch), n_sample=args.sample)
    _say(str(ranking))
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``biodatacentric`` (plain-text help, one subparser per stage).

    Examples
    --------
    >>> from biodatacentric.cli import build_parser
    >>> args = build_parser().parse_args(["predict", "a.tif", "--model", "M0", "--out", "a_pred.tif"])
    >>> args.command, args.images, args.axes
    ('predict', ['a.tif'], 'ZYX')
    """
    fmt = argparse.HelpFormatter
    parser = argparse.ArgumentParser(
        prog="biodatacentric", formatter_class=fmt, epilog=_EPILOG,
        description="Data-centric deep learning for bioimage analysis: pretrain, select a core set to "
                    "annotate, segment, hunt for mistakes and monitor quality, from the shell.")
    parser.add_argument("--version", action="version", version=f"biodatacentric {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, images: bool = True) -> None:
        if images:
            p.add_argument("images", nargs="+", metavar="IMAGES",
                           help="TIFF stacks: file names or a quoted pattern such as 'stacks/*.tif'")
            p.add_argument("--axes", default="ZYX", help="axis order of the images (default ZYX; YX for 2-D)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = sub.add_parser("pretrain", formatter_class=fmt, help="self-supervised MAE pretraining on all patches",
                       description="Pretrain a masked autoencoder on every patch of IMAGES and save it.")
    common(p)
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--patch", type=int, default=128, help="patch side in pixels (default 128)")
    p.add_argument("--epochs", type=int, default=100, help="training epochs (default 100)")
    p.add_argument("--preset", default="small", help="model size: tiny, small or base (default small)")
    p.add_argument("--embeddings", default=None, help="also save the patch embeddings to this .npy file")
    p.set_defaults(run=_cmd_pretrain)

    p = sub.add_parser("select", formatter_class=fmt, help="choose a core set for a person to annotate",
                       description="Audit the patches, choose K that cover the dataset (max K-cover), and "
                                   "export them to an annotation folder.")
    common(p)
    p.add_argument("--mae", required=True, help="model folder written by 'pretrain'")
    p.add_argument("--k", type=int, required=True, help="number of patches to annotate")
    p.add_argument("--out", required=True, help="annotation folder to write (images/, manifest.json)")
    p.add_argument("--patch", type=int, default=None, help="patch side (default: the MAE's)")
    p.add_argument("--no-audit", action="store_true", help="offer flagged (blank, blurry, ...) patches too")
    p.add_argument("--audit-exclude", nargs="*", default=["duplicate", "blank", "saturated", "blurry"],
                   choices=["duplicate", "blank", "saturated", "blurry", "outlier"], metavar="CHECK",
                   help="audit checks whose flagged patches are not offered (default: duplicate blank saturated "
                        "blurry; outliers are reported only)")
    p.add_argument("--duplicate-threshold", type=float, default=0.995,
                   help="cosine similarity from which two patches count as near-duplicates (default 0.995)")
    p.add_argument("--max-excluded", type=_fraction, default=MOST_EXCLUDED, metavar="FRACTION",
                   help="refuse (and say why) when the audit would exclude more than this share of the "
                        f"patches (default {MOST_EXCLUDED}); raise it to accept a larger exclusion knowingly")
    p.set_defaults(run=_cmd_select)

    p = sub.add_parser("segment", formatter_class=fmt, help="train a segmenter, or fine-tune one",
                       description="Train a segmenter on annotation folders (model M0), or with --fine-tune "
                                   "improve a saved one on new annotations while replaying old ones (M1, ...).")
    common(p, images=False)
    p.add_argument("annotations", nargs="+", metavar="ANNOTATIONS", help="annotation folders with painted masks")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--mae", default=None, help="start the transformer from this pretrained MAE")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the segmenter's)")
    p.add_argument("--preset", default=None, help="model size: tiny, small or base")
    p.add_argument("--fine-tune", default=None, metavar="MODEL", help="fine-tune this saved segmenter")
    p.add_argument("--replay", nargs="*", default=[], metavar="ANNOTATIONS",
                   help="earlier annotation folders replayed while fine-tuning (against forgetting)")
    p.set_defaults(run=_cmd_segment)

    p = sub.add_parser("hunt", formatter_class=fmt, help="find patches the model probably gets wrong",
                       description="Score every patch by how much the model's predictions under flips, rotations and "
                                   "Monte Carlo dropout disagree, and export the N most "
                                   "uncertain, with the model's masks for a person to correct.")
    common(p)
    p.add_argument("--model", required=True, help="segmenter folder written by 'segment'")
    p.add_argument("--n", type=int, default=3, help="patches to export (default 3)")
    p.add_argument("--out", required=True, help="annotation folder to write")
    p.add_argument("--exclude", nargs="*", default=[], metavar="ANNOTATIONS",
                   help="annotation folders whose patches are already annotated")
    p.add_argument("--samples", type=int, default=20, help="samples per patch: dihedral transforms with MC dropout (default 20)")
    p.set_defaults(run=_cmd_hunt)

    p = sub.add_parser("predict", formatter_class=fmt, help="segment whole stacks to TIFF or Zarr",
                       description="Segment whole stacks. --out ending in .tif writes an ImageJ TIFF "
                                   "(Fiji, napari) with the input's pixel size; .zarr a Zarr array; a "
                                   "folder gets <name>_pred.tif per input.")
    common(p)
    p.add_argument("--model", required=True, help="segmenter folder written by 'segment'")
    p.add_argument("--out", required=True, help="output file (.tif, .zarr) or folder")
    p.add_argument("--proba", action="store_true", help="write class probabilities instead of labels")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(run=_cmd_predict)

    p = sub.add_parser("monitor", formatter_class=fmt, help="estimate segmentation quality without ground truth",
                       description="Estimate the Dice of each prediction with reverse classification "
                                   "accuracy against annotated reference patches; write a CSV or JSON report.")
    common(p)
    p.add_argument("--predictions", nargs="+", required=True, help="one label TIFF per image, same order")
    p.add_argument("--references", nargs="+", required=True, metavar="ANNOTATIONS",
                   help="annotation folders with painted masks")
    p.add_argument("--out", required=True, help="report file (.csv or .json)")
    p.set_defaults(run=_cmd_monitor)

    p = sub.add_parser("fingerprint", formatter_class=fmt, help="describe a dataset: pixel size, contrast, structure size",
                       description="Summarise the stacks: pixel size, intensity range, signal-to-noise, the "
                                   "size of bright structures, the foreground share.")
    common(p)
    p.add_argument("--patch", type=int, default=128, help="patch side in pixels (default 128)")
    p.add_argument("--sample", type=int, default=256, help="patches read (default 256)")
    p.add_argument("--out", default=None, help="also write the fingerprint as JSON")
    p.set_defaults(run=_cmd_fingerprint)

    p = sub.add_parser("demo", formatter_class=fmt, help="the whole loop on the bundled sample or a folder",
                       description="Run the data-centric loop end to end and write a report and figures.")
    p.add_argument("--data", default=None,
                   help="folder with images/*.tif and masks/*.tif z-stacks (default: the bundled sample)")
    p.add_argument("--out", default="demo_output", help="folder for the report and figures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patch-size", type=int, default=None, help="patch side in pixels")
    p.add_argument("--quick", action="store_true", help="tiny models and few epochs (checks that it runs)")
    p.add_argument("--time-budget", default=None, metavar="TIME",
                   help="plan every stage to finish in about this time, e.g. 5min (see 'plan')")
    p.add_argument("--runs", default=None, help="JSON-lines file the run's record is appended to (default: "
                                               "your runs file, $BIODATACENTRIC_RUNS or "
                                               "~/.local/share/biodatacentric/runs.jsonl, which plan reads)")
    p.set_defaults(run=_cmd_demo)

    p = sub.add_parser("plan", formatter_class=fmt, help="choose settings for the data, machine and a time budget",
                       description="Fingerprint the stacks, time a few training steps on this machine and print "
                                   "the settings of every stage for the time budget, each with its reason.")
    common(p)
    p.add_argument("--patch", type=int, default=128, help="patch side the stacks are read at (default 128)")
    p.add_argument("--time-budget", default="10min", metavar="TIME", help="e.g. 90s, 10min, 1h (default 10min)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--annotation-budget", type=int, default=None, help="patches a person can annotate (caps K)")
    p.add_argument("--runs", default=None, help="a runs table (JSON lines) to read besides the shipped one and your runs file "
                        "($BIODATACENTRIC_RUNS or ~/.local/share/biodatacentric/runs.jsonl)")
    p.add_argument("--out", default=None, help="also write the plan as JSON")
    p.set_defaults(run=_cmd_plan)

    p = sub.add_parser("rank", formatter_class=fmt, help="order saved segmenters by their fit to new stacks",
                       description="Rank saved segmenters for new stacks by the drift from their model cards "
                                   "and their flip agreement (no labels); says when none fits.")
    common(p)
    p.add_argument("--models", required=True, help="folder of saved segmenters (one sub-folder each)")
    p.add_argument("--patch", type=int, default=128, help="patch side (default 128)")
    p.add_argument("--sample", type=int, default=16, help="patches sampled for the agreement (default 16)")
    p.set_defaults(run=_cmd_rank)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    A user error (a missing file, a bad value) prints one line starting with ``error:`` and
    returns 2, without a traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, TypeError, NotADirectoryError,
            IsADirectoryError, PermissionError) as exc:
        if os.environ.get("BIODATACENTRIC_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
