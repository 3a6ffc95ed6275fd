"""MC-dropout mistake hunting: which patches does the fitted segmenter probably get wrong?"""

from __future__ import annotations

import functools
import os
import threading
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .._params import Check, Interval, Options
from .._utils import autocast, check_random_state_int, progress, resolve_precision, unit_rows
from .._validation import as_index_mask, check_embeddings
from ..assess._cover import greedy_facility_location
from ..base import BaseHunter, register_estimator
from ..data import Patches, as_patches
from ..data.readers import _import_zarr
from ..parallel import map_patches, resolve_client, worker_copy, zarr_output
from ._plots import plot_critical
from ._sampling import (TRANSFORMS, apply, batch_seed, dropout_modules, invert, needs_labels, pad_input,
                        sample_transforms, sampling_mode, set_training, take_tree)
from .aggregate import AGGREGATES, BRANCH_SCORES, aggregate
from .uncertainty import MEASURES, compute_measures, get_measure

__all__ = ["MCDropoutHunter", "dropout_modules", "sampling_mode"]   # the last two live in _sampling

_MC_LOCK = threading.RLock()


@register_estimator
class MCDropoutHunter(BaseHunter):
    """Rank patches by how much an already fitted segmenter's stochastic predictions disagree.

    The samples come from Monte-Carlo dropout and, with ``transforms="dihedral"``, from
    test-time transforms: each of the ``n_samples`` passes sees the patch flipped and/or
    rotated by a multiple of 90 degrees (the 8 symmetries of the square, cycled; the same
    ones the segmenter trains with) and its output is transformed back before the measures.
    Transforms give the samples variation whatever dropout the segmenter was trained with;
    a segmenter whose dropout sits where it barely changes the output (e.g. only in a
    transformer whose features the decoder hardly uses) gives nearly identical MC-dropout
    samples, and then the scores are mostly numerical noise.

    The segmenter is used as it is: nothing is cloned, no weight or running statistic
    changes. Only dropout modules are switched to sampling mode during the stochastic
    passes (BatchNorm/GroupNorm stay in eval mode); every module's train/eval flag is
    restored afterwards, even on error. The passes are batched (the input is repeated
    along the batch axis, one forward call per chunk of patches) and draw their dropout
    masks from a private, seeded random stream (``random_state``), so the same seed gives
    the same ranking and the caller's global torch random state is left untouched.

    MC dropout approximates the model's posterior only for dropout layers that were active,
    at the same rates, during training (pitfall U2): train the segmenter with the dropout you
    sample here (``TransUNetSegmenter`` trains with ``mlp_dropout`` in the transformer and
    ``decoder_dropout`` in the decoder).

    Parameters
    ----------
    segmenter : fitted estimator or torch.nn.Module
        A fitted :class:`~biodatacentric.TransUNetSegmenter` (anything with a ``module_``
        exposing ``encode``/``decode``), or such a module itself.
    n_samples : int
        Number of stochastic passes ``T`` (20-50 is usual; fewer than 10 gives unstable
        rankings, pitfall U6).
    measure : {"mutual_information", "entropy", "variance", "variation_ratio"}
        Per-pixel measure (see :mod:`biodatacentric.hunt.uncertainty`) of every aggregate
        but ``"pairwise_dice"`` (which ignores it), and of :meth:`uncertainty_maps` and
        :meth:`plot`. Mutual information (BALD) measures the model's doubt only (pitfall U4).
    aggregate : {"pairwise_dice", "top_q", "mean", "sum", "foreground_mean", "structure"}
        Per-patch score (see :mod:`biodatacentric.hunt.aggregate`). The default
        ``"pairwise_dice"`` is 1 - the mean Dice between the samples' masks (structure, not
        area); with ``transforms="dihedral"`` it ranked patches by the model's true error
        better than the previous default (``"top_q"`` BALD with MC dropout alone) in the
        pre-registered cohort benchmark (``benchmarks/results/evidence_hunt.md``). ``"sum"``
        reproduces Cao et al.'s code; ``"structure"`` is experimental.
    top_q : float
        Fraction of pixels averaged by ``aggregate="top_q"``.
    radius : int
        Dilation of the predicted foreground (``"foreground_mean"``) and widening of skeleton
        branches (``"structure"``), in pixels.
    branch_score : {"uncertainty", "disconnect"}
        Branch score of ``aggregate="structure"``.
    mode : {"full", "decoder_only"}
        ``"full"`` samples every dropout of the network. ``"decoder_only"`` runs
        ``module.encode`` once (deterministically) and samples only the dropout inside
        ``module.decoder`` ``T`` times through ``module.decode`` -- cheaper, but it sees only
        the decoder weights' uncertainty, so it under-estimates the model's doubt. When the
        module also has ``decode_prepare(features)`` (the deterministic part of the decoder
        before its first dropout) and ``decode_sample(prepared)``, the prepared features are
        computed once too. With ``transforms="dihedral"`` the encoder (and the prepared part)
        runs once per distinct transform, ``min(n_samples, 8)`` times per patch instead of
        once, so most of the saving over ``"full"`` is lost (still the decoder tail only
        ``T`` times); a decoder without dropout is allowed then (the transforms vary).
    transforms : {"dihedral", "none"}
        Test-time transforms of the samples. ``"none"``: every pass sees the patch as it is
        (MC dropout only; needs an active dropout). ``"dihedral"`` (default): pass ``t`` sees transform
        ``t % 8`` of the patch (identity, three quarter turns, and those four flipped left to
        right), combined with the dropout masks when dropout is active, and its output is
        transformed back. Same cost as ``"none"`` in ``mode="full"``. An ``n_samples`` that
        is a multiple of 8 weighs every transform equally. Non-square patches work (the
        quarter-turned samples run as a second forward call).
    batch_size : int
        Patches per chunk; each forward pass holds ``batch_size * n_samples`` images.
    n_candidates : int
        Top-ranked patches considered by :meth:`select` with embedding diversity.
    slice_window : int
        :meth:`select` with ``diversity="one_per_slice"`` keeps at most one patch per stack
        within any ``slice_window`` consecutive-slice neighbourhood (0: one per slice).
    precision : {None, "auto", "bf16", "fp32"}
        Autocast precision of the passes; None uses the segmenter's (fp32 for a bare module).
    random_state : int or None
        Seed of the dropout masks.
    progress : bool or None
        Show a progress bar (None: when stderr is a terminal).

    Attributes
    ----------
    scores_ : ndarray (n_patches,)
        Score per patch (high = look at it first).
    ranking_ : ndarray (n_patches,)
        Patch indices by descending score.
    patch_sources_, patch_z_ : ndarray (n_patches,)
        Provenance (file and slice) of each scored patch, used by the diversity rule.
    seed_ : int
        Seed actually used (drawn when ``random_state`` is None).

    Examples
    --------
    A fitted ``TransUNetSegmenter`` is the usual input; any module with dropout works too:

    >>> from biodatacentric import Patches, make_vessels
    >>> from biodatacentric.hunt import MCDropoutHunter
    >>> from biodatacentric.nn.transunet import TransUNet
    >>> net = TransUNet(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, feature_size=4).eval()
    >>> img, _ = make_vessels((4, 64, 64), random_state=0)
    >>> pool = Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32))   # 4 slices x 4 tiles
    >>> hunter = MCDropoutHunter(net, n_samples=4, random_state=0).fit(pool)
    >>> hunter.scores_.shape
    (16,)
    >>> critical = hunter.select(2, exclude=[0, 1], diversity="one_per_slice")
    >>> len(critical), bool(set(critical) & {0, 1})
    (2, False)
    """

    _parameter_constraints: dict = {
        "segmenter": ["no_validation"],  # checked where it is used (_model), with advice
        "n_samples": [Interval(Integral, 2, None)],
        "measure": [Check(get_measure, f"one of {sorted(MEASURES)} (or an alias such as 'bald')")],
        "aggregate": [Options(AGGREGATES)],
        "top_q": [Interval(Real, 0.0, 1.0, closed="right")],
        "radius": [Interval(Integral, 0, None)],
        "branch_score": [Options(BRANCH_SCORES)],
        "mode": [Options(("full", "decoder_only"))],
        "transforms": [Options(TRANSFORMS)],
        "batch_size": [Interval(Integral, 1, None)],
        "n_candidates": [Interval(Integral, 1, None)],
        "slice_window": [Interval(Integral, 0, None)],
        "precision": [None, Options(("auto", "bf16", "fp32"))],
        "random_state": ["random_state"],
        "progress": [None, "boolean"],
    }

    def __init__(self, segmenter: Any = None, n_samples: int = 20, measure: str = "mutual_information",
                 aggregate: str = "pairwise_dice", top_q: float = 0.01, radius: int = 2,
                 branch_score: str = "uncertainty", mode: str = "full", transforms: str = "dihedral",
                 batch_size: int = 4, n_candidates: int = 30, slice_window: int = 1,
                 precision: str | None = None, random_state: int | None = None,
                 progress: bool | None = None) -> None:
        self.segmenter = segmenter
        self.n_samples = n_samples
        self.measure = measure
        self.aggregate = aggregate
        self.top_q = top_q
        self.radius = radius
        self.branch_score = branch_score
        self.mode = mode
        self.transforms = transforms
        self.batch_size = batch_size
        self.n_candidates = n_candidates
        self.slice_window = slice_window
        self.precision = precision
        self.random_state = random_state
        self.progress = progress

    def _model(self) -> tuple[nn.Module, torch.device, str]:
        """The segmenter's module, the device its weights are on, and its precision (nothing is
        copied or moved)."""
        seg = self.segmenter
        if seg is None:
            raise ValueError("segmenter is None: pass a fitted TransUNetSegmenter, "
                             "e.g. MCDropoutHunter(segmenter=seg)")
        if isinstance(seg, nn.Module):
            module, device, precision = seg, None, "fp32"
        else:
            check = getattr(seg, "_check_is_fitted", None)
            if callable(check):
                check()
            module = getattr(seg, "module_", None)
            if not isinstance(module, nn.Module):
                raise ValueError(f"segmenter must be a fitted segmenter with a torch module in 'module_' "
                                 f"(e.g. a fitted TransUNetSegmenter), got {type(seg).__name__}")
            device, precision = None, getattr(seg, "precision_", None)
            runtime = getattr(seg, "_runtime", None)
            if precision is None and callable(runtime):
                precision = runtime()[1]
            precision = precision or "fp32"
        if device is None:
            p = next(module.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        device = torch.device(device)
        if self.precision is not None:
            precision = self.precision
        precision = resolve_precision(str(precision), device)
        return module, device, precision

    def _sampled_dropouts(self, module: nn.Module) -> list[nn.Module]:
        if self.mode == "full":
            mods = dropout_modules(module)
            where = "the network"
        else:
            for name in ("encode", "decode"):
                if not callable(getattr(module, name, None)):
                    raise ValueError(f"mode='decoder_only' needs a module with encode() and decode(); "
                                     f"{type(module).__name__} has no {name}(); use mode='full'")
            decoder = getattr(module, "decoder", None)
            if not isinstance(decoder, nn.Module):
                raise ValueError(f"mode='decoder_only' needs the decoder's dropout in module.decoder; "
                                 f"{type(module).__name__} has no 'decoder' submodule; use mode='full'")
            mods = dropout_modules(decoder)
            where = "the decoder"
        if not mods and self.transforms == "none":
            raise ValueError(
                f"{where} has no dropout with a rate > 0 and transforms='none', so all samples would be "
                "identical. Use transforms='dihedral' (flipped and rotated inputs; works without dropout) or "
                "train the segmenter with dropout (e.g. TransUNetSegmenter(decoder_dropout=0.1))"
                + (" or use mode='full'" if self.mode == "decoder_only" else ""))
        return mods

    # ------------------------------------------------------------------ stochastic passes
    def _prepare(self, images: np.ndarray, module: nn.Module, device: torch.device) -> tuple[torch.Tensor, tuple]:
        """The padded ``(B, 1, H, W)`` input on ``device`` and the unpadded size (one plain pass)."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
        return pad_input(x, module).to(device), tuple(x.shape[-2:])

    def _sample_probs(self, images: np.ndarray, module: nn.Module, device: torch.device, precision: str,
                      dropouts: list[nn.Module]) -> torch.Tensor:
        """``(T, B, C, H, W)`` float32 softmax samples of one chunk (inside :func:`sampling_mode`).

        Sample ``t`` sees the input under transform ``ks[t]`` (padded after transforming) and
        its output is cropped and transformed back. Samples are grouped by the shape of their
        transformed input (one group for square patches), one forward call per group.
        """
        T = int(self.n_samples)
        ks = sample_transforms(self.transforms, T)
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None].to(device)
        b = x.shape[0]
        groups: dict[tuple, list[int]] = {}
        for t, k in enumerate(ks):
            groups.setdefault(tuple(apply(x[:1, :1], k).shape[-2:]), []).append(t)
        inputs = {k: pad_input(apply(x, k), module) for k in dict.fromkeys(ks)}
        out: list[torch.Tensor | None] = [None] * T
        with autocast(device, precision):
            for (hk, wk), ts in groups.items():
                if self.mode == "full":
                    set_training(dropouts, True)
                    logits = module(torch.cat([inputs[ks[t]] for t in ts]))
                else:  # the encoder (and the decoder up to its first dropout) once per distinct transform
                    set_training(dropouts, False)
                    kg = list(dict.fromkeys(ks[t] for t in ts))
                    feats = module.encode(torch.cat([inputs[k] for k in kg]))
                    prepare, sample = getattr(module, "decode_prepare", None), getattr(module, "decode_sample", None)
                    if callable(prepare) and callable(sample):
                        feats, decode = prepare(feats), sample
                    else:
                        decode = module.decode
                    index = torch.cat([torch.arange(b) + kg.index(ks[t]) * b for t in ts])
                    set_training(dropouts, True)
                    logits = decode(take_tree(feats, index, len(kg) * b))
                set_training(dropouts, False)
                for j, t in enumerate(ts):
                    out[t] = invert(logits[j * b:(j + 1) * b, :, :hk, :wk].float(), ks[t])
        logits = torch.stack(out)  # type: ignore[arg-type]
        if logits.shape[2] == 1:  # one sigmoid output
            fg = torch.sigmoid(logits)
            probs = torch.cat([1 - fg, fg], dim=2)
        else:
            probs = torch.softmax(logits, dim=2)
        return probs.cpu()

    def _run_mc(self, patches: Patches, seed: int, desc: str, consume: Callable[[np.ndarray, dict], None],
                offset: int = 0, measures: Any = None, labels: bool = True) -> None:
        """Run the seeded MC passes chunk by chunk and call ``consume(indices, measures)`` on each.

        Everything happens inside one private random stream (``torch.random.fork_rng``) and
        :func:`sampling_mode`, so the caller's torch random state and the module's flags are
        restored as soon as this returns or raises. The stream is reseeded for every batch
        from ``(seed, offset + position of the batch)``, so a run of whole batches computed
        elsewhere (a Dask worker, given its ``offset``) draws the same dropout masks.
        """
        module, device, precision = self._model()
        dropouts = self._sampled_dropouts(module)
        bs = int(self.batch_size)
        n = len(patches)
        starts = range(0, n, bs)
        devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        # one MC run at a time per process: torch's random stream and the modules' train/eval
        # flags are process-wide (Dask workers with several threads share them)
        with _MC_LOCK, torch.random.fork_rng(devices=devices), sampling_mode(module), torch.inference_mode():
            for start in progress(starts, desc=desc, total=len(starts), enabled=self.progress):
                torch.manual_seed(batch_seed(seed, offset + start))
                sel = np.arange(start, min(start + bs, n))
                probs = self._sample_probs(patches.images(sel), module, device, precision, dropouts)
                consume(sel, compute_measures(probs, measures, labels=labels))

    def _scores_from(self, stats: dict, measure: str, how: str, branch_score: str | None = None) -> np.ndarray:
        bscore = branch_score or self.branch_score
        labels = stats["labels"].numpy() if needs_labels(how, bscore) else None
        return aggregate(stats[measure].numpy(), how, mean_probability=stats["mean_probability"].numpy(),
                         labels=labels, top_q=self.top_q, radius=int(self.radius), branch_score=bscore,
                         foreground_class=int(stats["foreground_class"]))

    # ------------------------------------------------------------------ BaseHunter hook
    def fit(self, patches: Patches | np.ndarray, y: None = None, *, client: Any = None) -> "MCDropoutHunter":
        """Score every patch of ``patches`` (a :class:`~biodatacentric.Patches`).

        ``client``: a :class:`dask.distributed.Client` to score on (``None``: the active
        client, if any; ``False``: this process). Runs of whole batches go to the workers,
        the segmenter is sent to each once, and the scores are identical to a
        single-process run (the dropout masks of a batch depend only on ``random_state``
        and the batch's position).
        """
        self._validate_params()
        patches = as_patches(patches, name="patches")
        return self._finish_fit(self._scores(patches, client), patches)

    def _chunk_scores(self, patches: Patches, offset: int, *, seed: int) -> np.ndarray:
        """Scores of a run of patches starting at position ``offset`` (in this process)."""
        measure = get_measure(self.measure)
        scores = np.empty(len(patches))

        def consume(sel: np.ndarray, stats: dict) -> None:
            scores[sel] = self._scores_from(stats, measure, self.aggregate)

        self._run_mc(patches, seed, "MC-dropout hunting", consume, offset=offset, measures=[measure],
                     labels=needs_labels(self.aggregate, self.branch_score))
        return scores

    def _score_patches(self, patches: Patches) -> np.ndarray:
        return self._scores(patches, None)

    def _scores(self, patches: Patches, client: Any) -> np.ndarray:
        """Scores of every patch, on ``client`` (see :meth:`fit`) or in this process."""
        client = resolve_client(client)
        self._validate_params()
        seed = check_random_state_int(self.random_state)
        if client is None:
            scores = self._chunk_scores(patches, 0, seed=seed)
        else:
            shipped = worker_copy(self, precision=self._model()[2])
            bs = int(self.batch_size)
            scores = map_patches(functools.partial(shipped._chunk_scores, seed=seed), patches, client=client,
                                 align=bs, chunk_size=16 * bs, pass_offset=True)
        prov = patches.provenance()
        self.patch_sources_ = np.asarray(prov.source).astype(str)
        self.patch_z_ = np.asarray(prov.z, dtype=np.int64)
        self.seed_ = int(seed)
        self.n_patches_ = len(patches)
        return scores

    # ------------------------------------------------------------------ extra outputs
    def _as_patches(self, patches: Patches | np.ndarray) -> Patches:
        return as_patches(patches, name="patches")

    def uncertainty_maps(self, patches: Patches | np.ndarray, out: Any = None, *, overwrite: bool = False) -> dict[str, Any]:
        """Per-pixel maps of ``patches`` from the same seeded MC passes as :meth:`fit`.

        The result holds five float32 arrays of shape ``(n, H, W)``: ``"mean_probability"``
        (mean foreground probability) and one per measure (``"entropy"``,
        ``"mutual_information"``, ``"variance"``, ``"variation_ratio"``). In memory they suit
        a few patches (the critical set); for many, pass ``out``.

        Parameters
        ----------
        patches : Patches
        out : path or zarr group, optional
            Write the maps batch by batch into a Zarr group with one array per key (chunks
            of ``batch_size`` patches; needs the ``zarr`` extra) instead of holding them in
            memory. A path is filled as ``<out>.partial`` and renamed when complete. The
            returned dict then holds the Zarr arrays (opened read-only for a path).
        overwrite : bool
            Replace an existing ``out`` path.
        """
        self._check_is_fitted()
        self._validate_params()
        patches = self._as_patches(patches)
        keys = ["mean_probability", *MEASURES]
        shape = (len(patches), *patches.patch_shape)

        def fill(arrays: dict) -> None:
            def consume(sel: np.ndarray, stats: dict) -> None:
                for k in keys:
                    arrays[k][int(sel[0]):int(sel[-1]) + 1] = stats[k].numpy()

            self._run_mc(patches, self.seed_, "MC-dropout maps", consume)

        if out is None:
            maps = {k: np.empty(shape, dtype=np.float32) for k in keys}
            fill(maps)
            return maps

        chunks = (min(int(self.batch_size), max(len(patches), 1)), *patches.patch_shape)
        attrs = {"biodatacentric": {"content": "MC-dropout uncertainty maps", "seed": int(self.seed_),
                                    "n_samples": int(self.n_samples),
                                    "transforms": str(self.transforms), "sources": sorted(set(patches.sources))}}
        with zarr_output(out, {k: (shape, chunks, np.float32) for k in keys}, attrs=attrs,
                         overwrite=overwrite) as arrays:
            fill(arrays)
        if isinstance(out, (str, os.PathLike)):
            group = _import_zarr().open_group(os.fspath(out), mode="r")
            return {k: group[k] for k in keys}
        return dict(arrays)

    def score_table(self, patches: Patches | np.ndarray, measures: Any = None, aggregates: Any = None) -> dict[str, np.ndarray]:
        """Scores of every ``measure/aggregate`` pair from one set of MC passes.

        For comparing scoring rules (e.g. against the true error of each patch). Keys are
        ``"<measure>/<aggregate>"``; ``"structure"`` uses ``branch_score="uncertainty"``, and
        the measure-free ``"disconnect/structure"`` (fraction of samples in which the
        worst skeleton branch breaks) is added when ``"structure"`` is asked for; the
        measure-free ``"pairwise_dice"`` gives one key, ``"masks/pairwise_dice"``.
        """
        self._check_is_fitted()
        self._validate_params()
        patches = self._as_patches(patches)
        ms = list(MEASURES) if measures is None else [get_measure(m) for m in measures]
        ags = list(AGGREGATES) if aggregates is None else list(aggregates)
        for a in ags:
            if a not in AGGREGATES:
                raise ValueError(f"aggregate {a!r} is not one of {AGGREGATES}")
        per_measure = [a for a in ags if a != "pairwise_dice"]
        keys = [f"{m}/{a}" for m in ms for a in per_measure]
        if "structure" in ags:
            keys.append("disconnect/structure")
        if "pairwise_dice" in ags:
            keys.append("masks/pairwise_dice")
        out = {k: np.empty(len(patches)) for k in keys}

        def consume(sel: np.ndarray, stats: dict) -> None:
            for m in ms:
                for a in per_measure:
                    out[f"{m}/{a}"][sel] = self._scores_from(stats, m, a, "uncertainty")
            if "structure" in ags:
                out["disconnect/structure"][sel] = self._scores_from(stats, ms[0], "structure", "disconnect")
            if "pairwise_dice" in ags:
                out["masks/pairwise_dice"][sel] = self._scores_from(stats, ms[0], "pairwise_dice")

        self._run_mc(patches, self.seed_, "MC-dropout score table", consume)
        return out

    # ------------------------------------------------------------------ selection
    def select(self, n: int, exclude: Any = None, diversity: Any = None,
               n_candidates: int | None = None) -> np.ndarray:
        """Indices of ``n`` patches to show a person, highest score first.

        Parameters
        ----------
        n : int
            How many patches.
        exclude : array-like of int or bool, optional
            Patches never to select (already labelled, e.g. the core set; pitfall U7).
        diversity : None, "one_per_slice" or array of shape (n_patches, d)
            ``None``: the ``n`` best scores. ``"one_per_slice"``: walk down the ranking and
            skip a patch when one from the same stack within ``slice_window`` slices is
            already picked (neighbouring tiles and slices are near-duplicates, pitfall U5).
            An embedding array (one row per scored patch, e.g. from
            :class:`~biodatacentric.MAEPretrainer`): among the ``n_candidates`` best-scored
            patches pick ``n`` by greedy facility location over all non-excluded patches
            (cosine similarity), as in Suggestive Annotation (Yang et al. 2017).
        n_candidates : int, optional
            Overrides the ``n_candidates`` parameter.

        Returns
        -------
        ndarray of int64, shape (n,)
        """
        self._check_is_fitted()
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        n_total = len(self.scores_)
        excl = as_index_mask(exclude, n_total, name="exclude")
        order = self.ranking_[~excl[self.ranking_]]
        if n > len(order):
            raise ValueError(f"n={n} but only {len(order)} of {n_total} patches are not excluded")
        if diversity is None:
            return order[:n].astype(np.int64)
        if isinstance(diversity, str):
            if diversity != "one_per_slice":
                raise ValueError(f"diversity={diversity!r} must be None, 'one_per_slice' or an embedding array")
            return self._select_one_per_slice(order, n)
        return self._select_facility_location(order, n, excl, diversity,
                                              self.n_candidates if n_candidates is None else n_candidates)

    def _select_one_per_slice(self, order: np.ndarray, n: int) -> np.ndarray:
        win = int(self.slice_window)
        picked: list[int] = []
        taken: dict[str, list[int]] = {}
        for i in order:
            src, z = str(self.patch_sources_[i]), int(self.patch_z_[i])
            if any(abs(z - z2) <= win for z2 in taken.get(src, [])):
                continue
            picked.append(int(i))
            taken.setdefault(src, []).append(z)
            if len(picked) == n:
                return np.asarray(picked, dtype=np.int64)
        raise ValueError(f"only {len(picked)} patches satisfy diversity='one_per_slice' with "
                         f"slice_window={win} (at most one per stack within {win} slices); ask for "
                         "fewer patches or lower slice_window")

    def _select_facility_location(self, order: np.ndarray, n: int, excl: np.ndarray, embeddings: Any,
                                  n_candidates: int) -> np.ndarray:
        emb = check_embeddings(embeddings, name="diversity embeddings")
        if emb.shape[0] != len(self.scores_):
            raise ValueError(f"diversity embeddings have {emb.shape[0]} rows but {len(self.scores_)} patches "
                             "were scored; pass one embedding per scored patch, in the same order")
        if not isinstance(n_candidates, (int, np.integer)) or n_candidates < 1:
            raise ValueError(f"n_candidates must be a positive integer, got {n_candidates!r}")
        cands = order[:max(int(n_candidates), n)]
        pool = np.flatnonzero(~excl)
        # facility location over all non-excluded patches, picks among the candidates; ties go to
        # the better-scored candidate (the one greedy cover solver of the core-set selectors)
        picked = greedy_facility_location(unit_rows(emb)[pool], np.searchsorted(pool, cands), n)
        return pool[picked].astype(np.int64)

    # ------------------------------------------------------------------ plotting
    def plot(self, patches: Patches | np.ndarray, indices: Any = None, path: str | Path = "critical.png",
             measure: str | None = None) -> Path:
        """Write a PNG with one row per patch: image, mean prediction, uncertainty overlay.

        Parameters
        ----------
        patches : Patches
            The scored patches (``indices`` refer to them), or just the critical set.
        indices : array-like of int, optional
            Which patches (default: all of ``patches``).
        path : path
            Output PNG (written with matplotlib's Agg backend; no display needed).
        measure : str, optional
            Measure shown (default: the hunter's ``measure``).
        """
        return plot_critical(self, patches, indices=indices, path=path, measure=measure)


