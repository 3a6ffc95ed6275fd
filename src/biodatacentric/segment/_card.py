"""The model card a fitted :class:`~biodatacentric.segment.TransUNetSegmenter` carries.

A card says what the model was trained on and how well it did, in plain JSON
(``model_card.json`` in the save folder; never a pickle):

* ``model``: class, preset, patch shape, classes, where the encoder came from;
* ``training_data``: the :func:`~biodatacentric.data.fingerprint` of the training patches
  and ``embedding``, a summary of them under the label-free descriptor
  :data:`~biodatacentric.data._descriptor.DESCRIPTOR` (mean, spread and up to 8 centroids;
  no MAE needed), which :func:`biodatacentric.rank_models` compares with new data;
* ``rounds``: round 0 is the core set ``fit`` trained on, every ``fine_tune`` adds a
  critical round (patch counts per source, replayed patches, epochs, seconds);
* ``validation``: the validation Dice of the latest validated run, when validated;
* ``monitor``: a quality monitor's calibration (:meth:`ModelCard.record_monitor`), if known;
* ``resources``: training time, the process's peak memory, device, precision, threads.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_text, to_jsonable
from .._version import __version__
from ..data import Patches, as_patches
from ..data._descriptor import describe, summarise
from ..data.fingerprint import fingerprint

__all__ = ["ModelCard", "CARD_FILE"]

CARD_FILE = "model_card.json"
_FORMAT = "biodatacentric-model-card-1"
_MAX_DESCRIBED = 256


class ModelCard:
    """What a segmenter was trained on, how it was validated and what it cost (JSON only).

    Attributes
    ----------
    model, training_data, resources : dict
    rounds : list of dict
    validation, monitor : dict or None
    created, version : str
    """

    _KEYS = ("model", "training_data", "rounds", "validation", "monitor", "resources", "created", "version")

    def __init__(self, model: dict, training_data: dict, rounds: list, validation: dict | None = None,
                 monitor: dict | None = None, resources: dict | None = None, created: str | None = None,
                 version: str | None = None) -> None:
        self.model = model
        self.training_data = training_data
        self.rounds = list(rounds)
        self.validation = validation
        self.monitor = monitor
        self.resources = dict(resources or {})
        self.created = created or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        self.version = version or __version__

    # ------------------------------------------------------------------ plain data
    def to_dict(self) -> dict:
        """A JSON-able dict (``format`` plus the attributes)."""
        return {"format": _FORMAT, **{k: to_jsonable(getattr(self, k)) for k in self._KEYS}}

    @classmethod
    def from_dict(cls, data: Any, where: str = "the card") -> "ModelCard":
        """The card of :meth:`to_dict` (checks the format and the keys)."""
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{where} is not a biodatacentric model card (format {_FORMAT!r})")
        missing = [k for k in ("model", "training_data", "rounds") if k not in data]
        if missing:
            raise ValueError(f"{where} lacks {missing}; it was edited or written by another version")
        return cls(**{k: data[k] for k in cls._KEYS if k in data})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the card as JSON (atomically)."""
        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelCard":
        """Read a card written by :meth:`save` (a file, or a model folder holding ``model_card.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / CARD_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; a segmenter saved by this version writes "
                                    f"{CARD_FILE} into its folder")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); the card is damaged") from None
        return cls.from_dict(data, where=str(path))

    # ------------------------------------------------------------------ what a user adds
    def record_validation(self, dice: float, n_patches: int, on: str = "held-out patches") -> "ModelCard":
        """Record a validation Dice measured outside ``fit`` (e.g. on a held-out stack)."""
        self.validation = {"dice": float(dice), "n_patches": int(n_patches), "on": str(on)}
        return self

    def record_monitor(self, monitor: Any) -> "ModelCard":
        """Record a fitted :class:`~biodatacentric.QualityMonitor`'s calibration (or RCA monitor's).

        Stores the references' count, the conformal half-width and coverage, and the mean
        absolute error of the cross-fitted estimates on the calibration rows.
        """
        if not hasattr(monitor, "n_references_") and not hasattr(monitor, "calibration_y_"):
            raise ValueError("record_monitor needs a fitted QualityMonitor (or RCAMonitor); fit it first")
        info: dict[str, Any] = {"class": type(monitor).__name__}
        for key in ("n_references_", "halfwidth_"):
            if hasattr(monitor, key):
                info[key.rstrip("_")] = to_jsonable(getattr(monitor, key))
        for key in ("coverage", "threshold"):
            if hasattr(monitor, key):
                info[key] = float(getattr(monitor, key))
        y, oof = getattr(monitor, "calibration_y_", None), getattr(monitor, "calibration_oof_", None)
        if y is not None and oof is not None and len(y):
            info["calibration_mae"] = float(np.mean(np.abs(np.asarray(y) - np.asarray(oof))))
            info["calibration_rows"] = int(len(y))
        self.monitor = info
        return self

    # ------------------------------------------------------------------ printing
    def __repr__(self) -> str:
        return f"ModelCard({self.model.get('class')}, {self.training_data.get('n_patches')} training patches)"

    def __str__(self) -> str:
        m, d, r = self.model, self.training_data, self.resources
        lines = [f"{m.get('class')} (preset {m.get('preset')}, patches {m.get('patch_shape')}, "
                 f"{m.get('n_classes')} classes; encoder from {m.get('encoder_source') or 'scratch'})",
                 f"trained on {d.get('n_patches')} patches from {len(d.get('sources', []))} source(s)"]
        fp = d.get("fingerprint") or {}
        if fp:
            ms = fp.get("mask_share")
            lines.append(f"  structure scale ~{fp.get('structure_scale_px', float('nan')):.1f} px, SNR "
                         f"~{fp.get('snr', float('nan')):.1f}, mask share "
                         + ("unknown" if ms is None else f"{ms:.3f}"))
        emb = d.get("embedding") or {}
        if emb:
            lines.append(f"  embedding summary: {emb.get('embedder')} over {emb.get('n')} patches, "
                         f"{len(emb.get('centroids', []))} centroids")
        for rd in self.rounds:
            lines.append(f"round {rd['round']} ({rd['kind']}): {rd.get('n_patches')} patches"
                         + (f" + {rd['n_replay_per_epoch']} replayed per epoch" if rd.get("n_replay_per_epoch")
                            else "") + f", {rd.get('epochs')} epochs, {rd.get('seconds', 0):.1f} s")
        v = self.validation
        lines.append(f"validation Dice {v['dice']:.3f} on {v.get('n_patches')} {v.get('on')}" if v
                     else "validation: none recorded")
        mo = self.monitor
        lines.append(f"monitor: {mo['class']}, half-width {mo.get('halfwidth', float('nan')):.3f}, "
                     f"calibration MAE {mo.get('calibration_mae', float('nan')):.3f}" if mo
                     else "monitor: none recorded")
        if r:
            lines.append(f"training took {r.get('train_seconds', 0):.1f} s on {r.get('device')} "
                         f"({r.get('precision')}, {r.get('torch_threads')} threads); peak memory "
                         f"{r.get('peak_memory_mb', float('nan')):.0f} MB ({r.get('memory_kind')})")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The card as Markdown (the bioimage.io export's README section)."""
        return "\n".join(["## Model card (biodatacentric)", "", "```text", str(self), "```", ""])


# ---------------------------------------------------------------------- building cards
class Meter:
    """Times a training run and reads the peak memory it reached."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()

    def read(self) -> dict:
        seconds = time.perf_counter() - self.t0
        if self.device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(self.device) / 2 ** 20, "CUDA max allocated"
        else:
            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"
        return {"seconds": float(seconds), "peak_memory_mb": float(peak), "memory_kind": kind}


def _source_counts(p: Patches) -> dict:
    names, counts = np.unique(np.asarray(p.provenance().source).astype(str), return_counts=True)
    return {str(Path(n).name): int(c) for n, c in zip(names, counts)}


def describe_patches(images: np.ndarray, max_patches: int = _MAX_DESCRIBED) -> dict:
    """The descriptor summary of (up to ``max_patches`` evenly spread) normalised patches."""
    idx = np.unique(np.linspace(0, len(images) - 1, min(len(images), max_patches)).round().astype(int))
    return summarise(describe(images[idx]))


def new_card(seg: Any, patches: Any, X: np.ndarray, meter: Meter, n_val: int | None) -> ModelCard:
    """The card of a segmenter ``fit`` just trained on ``patches`` (images ``X``)."""
    p = as_patches(patches, name="patches")
    fp = fingerprint(p, max_patches=64).to_dict()
    fp.pop("sources", None)
    sources = sorted(set(np.asarray(p.provenance().source).astype(str)))   # original stacks, not patch files
    fp.pop("pixel_size_by_source", None)
    cost = meter.read()
    dev, prec = seg._runtime()
    module = seg.module_
    card = ModelCard(
        model={"class": type(seg).__name__, "network": type(module).__name__,
               "preset": None if seg.network is not None else seg.preset,
               "patch_shape": [int(v) for v in seg.patch_shape_], "n_classes": int(seg._n_classes_out()),
               "encoder_source": (seg.encoder_transfer_ or {}).get("source"),
               "n_parameters": int(sum(t.numel() for t in module.parameters()))},
        training_data={"n_patches": int(len(p)), "sources": [str(s) for s in sources],
                       "fingerprint": fp, "embedding": describe_patches(X)},
        rounds=[{"round": 0, "kind": "core", "n_patches": int(len(p)), "sources": _source_counts(p),
                 "epochs": len(seg.history_.get("loss", [])), "seconds": cost["seconds"]}],
        resources={"train_seconds": cost["seconds"], "peak_memory_mb": cost["peak_memory_mb"],
                   "memory_kind": cost["memory_kind"], "device": str(dev), "precision": prec,
                   "torch_threads": int(torch.get_num_threads())})
    if n_val:
        _validation_from_history(card, seg.history_, seg.best_epoch_, n_val, "validation patches during fit")
    return card


def add_round(seg: Any, new: Any, n_replay: int, n_pool: int, history: dict, meter: Meter,
              n_val: int | None) -> None:
    """Add a critical round (a ``fine_tune``) to the segmenter's card, if it has one."""
    card = getattr(seg, "card_", None)
    if not isinstance(card, ModelCard):
        return
    cost = meter.read()
    p = as_patches(new, name="new")
    card.rounds.append({"round": len(card.rounds), "kind": "critical", "n_patches": int(len(p)),
                        "sources": _source_counts(p), "n_replay_per_epoch": int(n_replay),
                        "replay_pool": int(n_pool), "epochs": len(history.get("loss", [])),
                        "seconds": cost["seconds"]})
    card.resources["train_seconds"] = float(card.resources.get("train_seconds", 0.0)) + cost["seconds"]
    card.resources["peak_memory_mb"] = max(float(card.resources.get("peak_memory_mb", 0.0)),
                                           cost["peak_memory_mb"])
    if n_val:
        _validation_from_history(card, history, history.get("best_epoch"), n_val,
                                 f"validation patches during fine-tuning round {len(card.rounds) - 1}")


def _validation_from_history(card: ModelCard, history: dict, best: Any, n_val: int, on: str) -> None:
    vals = history.get("val_dice") or []
    if vals:
        dice = vals[best] if best is not None and 0 <= int(best) < len(vals) else max(vals)
        card.validation = {"dice": float(dice), "n_patches": int(n_val), "on": on}


def save_card(seg: Any, folder: Path) -> None:
    card = getattr(seg, "card_", None)
    if isinstance(card, ModelCard):
        card.save(folder / CARD_FILE)


def load_card(seg: Any, folder: Path) -> None:
    if (folder / CARD_FILE).is_file():
        seg.card_ = ModelCard.load(folder / CARD_FILE)
