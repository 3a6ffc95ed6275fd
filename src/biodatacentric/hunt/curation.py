"""The curation loop: export the critical patches, read the corrected masks, keep a record.

One round of the loop (Cao et al. 2025, stage 3)::

    hunter = MCDropoutHunter(m0, random_state=0).fit(pool)
    critical = hunter.select(3, exclude=core_idx, diversity="one_per_slice")
    log = CurationLog("curation/log.json")
    r = log.start_round(pool, critical, "curation/round1", model=m0, hunter=hunter,
                        model_name="M0")            # prediction of M0 = starting mask
    # ... a person corrects curation/round1/masks/*.tif in napari or Fiji ...
    labelled = log.read_round(r)                     # Patches with the corrected masks
    m1 = copy.deepcopy(m0).fine_tune(labelled, replay=core)   # fine_tune trains in place
    log.record_model(r, "M1", m1, metrics={"dice_test": 0.81})

The log is one JSON file (rewritten atomically after every change) holding, per round: the
exported patches (pool index, file, z, y, x, score, rank), the hunter's settings and seed,
the model that predicted the starting masks (name, class and a SHA-256 fingerprint of its
weights), the labels read back (a hash of each mask, whether the person changed it) and the
model trained afterwards with its metrics -- enough to repeat a round and compare rounds.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_text, to_jsonable
from ..data import Patches
from ..data.annotations import _sha256, annotation_status
from .hunter import MCDropoutHunter, sampling_mode

__all__ = ["CurationLog", "model_fingerprint", "starting_masks", "export_critical"]

LOG_FORMAT = "biodatacentric-curation-log"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _module_of(model: Any) -> torch.nn.Module | None:
    if isinstance(model, torch.nn.Module):
        return model
    mod = getattr(model, "module_", None)
    return mod if isinstance(mod, torch.nn.Module) else None


def model_fingerprint(model: Any) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and values), as hex.

    Accepts a torch module or a fitted estimator with ``module_``. Two models with the same
    fingerprint have identical weights and buffers.

    Examples
    --------
    >>> import torch
    >>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    >>> _ = b.load_state_dict(a.state_dict())          # copy the weights
    >>> fp = model_fingerprint(a)
    >>> len(fp), fp == model_fingerprint(b)
    (64, True)
    >>> with torch.no_grad():
    ...     _ = b.bias.add_(1.0)
    >>> fp == model_fingerprint(b)
    False
    """
    module = _module_of(model)
    if module is None:
        raise TypeError(f"cannot fingerprint {type(model).__name__}: expected a torch module or a "
                        "fitted estimator with 'module_'")
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def starting_masks(model: Any, patches: Patches, hunter: Any = None) -> np.ndarray:
    """The model's predicted masks ``(n, H, W)`` uint8 for ``patches`` (the starting masks).

    Uses ``model.predict(patches)`` when the model has it (a fitted segmenter), else the
    arg-max of one deterministic (eval-mode) forward pass of the module, via the ``hunter``'s
    input preparation when given.

    Examples
    --------
    >>> import torch
    >>> from biodatacentric import Patches, make_vessels
    >>> img, _ = make_vessels((2, 32, 32), random_state=0)
    >>> pool = Patches.from_arrays(img, axes="ZYX")
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Conv2d(1, 2, 3, padding=1)      # any module mapping (B, 1, H, W) to (B, C, H, W)
    >>> m = starting_masks(net, pool)
    >>> m.shape, m.dtype, net.training                 # the module's train flag is restored
    ((2, 32, 32), dtype('uint8'), True)
    """
    predict = getattr(model, "predict", None)
    if callable(predict) and not isinstance(model, torch.nn.Module):
        pred = np.asarray(predict(patches))
        if pred.ndim == 4:  # (n, 1, H, W)
            pred = pred[:, 0]
        if pred.shape != (len(patches), *patches.patch_shape):
            raise ValueError(f"{type(model).__name__}.predict returned shape {pred.shape}, expected "
                             f"{(len(patches), *patches.patch_shape)}")
        return (pred > 0).astype(np.uint8)
    module = _module_of(model)
    if module is None:
        raise TypeError("model must be a fitted segmenter (with predict) or a torch module")

    helper = hunter if hunter is not None else MCDropoutHunter(module)
    p = next(module.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    out = np.empty((len(patches), *patches.patch_shape), dtype=np.uint8)
    with sampling_mode(module), torch.no_grad():
        for start in range(0, len(patches), 8):
            sel = np.arange(start, min(start + 8, len(patches)))
            x, (h, w) = helper._prepare(patches.images(sel), module, device)
            logits = module(x).float()[..., :h, :w]
            lab = (logits[:, 0] > 0) if logits.shape[1] == 1 else (logits.argmax(dim=1) == logits.shape[1] - 1)
            out[sel] = lab.cpu().numpy().astype(np.uint8)
    return out


def export_critical(patches: Patches, indices: Any, directory: str | os.PathLike, *, model: Any = None,
                    masks: Any = None, mask_origin: str = "prediction M0",
                    on_existing: str = "error") -> Path:
    """Export ``patches[indices]`` for correction, the model's prediction as starting mask.

    ``masks`` (``(len(indices), H, W)``) overrides the prediction; otherwise
    :func:`starting_masks` of ``model`` is used. Returns the folder (see
    :meth:`~biodatacentric.Patches.export` for its layout).

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from biodatacentric import Patches, make_vessels
    >>> img, _ = make_vessels((3, 32, 32), random_state=0)
    >>> pool = Patches.from_arrays(img, axes="ZYX")
    >>> tmp = tempfile.TemporaryDirectory()
    >>> out = export_critical(pool, [2, 0], pathlib.Path(tmp.name) / "round1", model=torch.nn.Conv2d(1, 2, 1))
    >>> sorted(p.name for p in out.iterdir()), len(list((out / "masks").iterdir()))
    (['README.txt', 'images', 'manifest.json', 'masks'], 2)
    >>> tmp.cleanup()
    """
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if idx.size == 0:
        raise ValueError("indices is empty: nothing to export")
    subset = patches[idx]
    if masks is None:
        if model is None:
            raise ValueError("pass model= (to predict the starting masks) or masks=")
        masks = starting_masks(model, subset)
    return subset.export(directory, masks=masks, mask_origin=mask_origin, on_existing=on_existing)


class CurationLog:
    """A JSON record of curation rounds, so rounds can be repeated and compared.

    Parameters
    ----------
    path : path
        The JSON file; read if it exists, created on the first change. Every change rewrites
        it atomically (readers never see a half-written file).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from biodatacentric import Patches
    >>> from biodatacentric.hunt.curation import CurationLog
    >>> tmp = tempfile.mkdtemp()
    >>> pool = Patches.from_arrays(np.random.default_rng(0).random((4, 16, 16)), axes="ZYX")
    >>> log = CurationLog(f"{tmp}/log.json")
    >>> r = log.start_round(pool, [2, 0], f"{tmp}/round1", masks=np.zeros((2, 16, 16), np.uint8),
    ...                     scores=[0.9, 0.5, 0.7, 0.1], model_name="M0")
    >>> labelled = log.read_round(r)          # here the starting masks stand in for corrections
    >>> len(labelled), log.rounds[0]["status"]
    (2, 'annotated')
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ValueError(f"{self.path} is not valid JSON ({exc}); restore it or use a new path") from exc
            if data.get("format") != LOG_FORMAT:
                raise ValueError(f"{self.path} is not a biodatacentric curation log")
            self._data = data
        else:
            self._data = {"format": LOG_FORMAT, "version": 1, "created": _now(), "rounds": []}

    # ------------------------------------------------------------------ access
    @property
    def rounds(self) -> list[dict]:
        """The round records (dicts), oldest first."""
        return self._data["rounds"]

    def round(self, number: int) -> dict:
        """The record of round ``number`` (1-based)."""
        for r in self.rounds:
            if r["round"] == number:
                return r
        raise KeyError(f"no round {number} in {self.path} (rounds: {[r['round'] for r in self.rounds]})")

    def save(self) -> Path:
        """Write the log atomically (called after every change)."""
        return atomic_write_text(self.path, json.dumps(self._data, indent=1))

    # ------------------------------------------------------------------ the loop
    def start_round(self, patches: Patches, indices: Any, directory: str | os.PathLike, *,
                    model: Any = None, hunter: Any = None, scores: Any = None, masks: Any = None,
                    model_name: str = "M0", note: str = "", on_existing: str = "error") -> int:
        """Export ``patches[indices]`` with starting masks and open a new round; returns its number.

        Parameters
        ----------
        patches : Patches
            The pool the indices refer to (the patches the hunter scored).
        indices : array-like of int
            The selected critical patches, in the order shown to the person.
        directory : path
            Export folder (must not hold masks yet, unless ``on_existing="keep"``).
        model : fitted segmenter or module, optional
            Predicts the starting masks and is fingerprinted as the round's model. Defaults to
            ``hunter.segmenter``.
        hunter : MCDropoutHunter, optional
            Its settings, seed and scores are recorded.
        scores : array-like (len(patches),), optional
            Scores to record when no hunter is given.
        masks : array (len(indices), H, W), optional
            Starting masks overriding the segmenter's prediction.
        model_name : str
            Name of the model that predicted the starting masks (e.g. ``"M0"``).
        note : str
            Free text kept with the round.
        """
        idx = np.asarray(indices, dtype=np.int64).ravel()
        if idx.size == 0:
            raise ValueError("indices is empty: nothing to curate")
        if len(np.unique(idx)) != idx.size:
            raise ValueError("indices holds duplicates")
        if idx.min() < 0 or idx.max() >= len(patches):
            raise IndexError(f"indices must lie in [0, {len(patches)})")
        if model is None:
            model = getattr(hunter, "segmenter", None)
        if masks is None and model is None:
            raise ValueError("pass model= (a fitted segmenter) or hunter= to predict the starting masks, "
                             "or masks=")
        if scores is None and hunter is not None and hasattr(hunter, "scores_"):
            scores = hunter.scores_
        if scores is not None:
            scores = np.asarray(scores, dtype=np.float64).ravel()
            if scores.shape != (len(patches),):
                raise ValueError(f"scores must hold one value per pool patch ({len(patches)}), got {scores.shape}")
        directory = Path(directory)
        subset = patches[idx]
        if masks is None:
            masks = starting_masks(model, subset, hunter=hunter)
        subset.export(directory, masks=masks, mask_origin=f"prediction {model_name}", on_existing=on_existing)
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        ids = {(e["source"], e["z"], e["y"], e["x"]): e["id"] for e in manifest["patches"]}
        prov = subset.provenance()
        ranks = None
        if scores is not None:
            order = np.lexsort((np.arange(len(scores)), -scores))
            ranks = np.empty(len(scores), dtype=np.int64)
            ranks[order] = np.arange(len(scores))
        selected = []
        for k, i in enumerate(idx):
            key = (str(prov.source[k]), int(prov.z[k]), int(prov.y[k]), int(prov.x[k]))
            selected.append({"pool_index": int(i), "export_id": ids.get(key), "source": key[0], "z": key[1],
                             "y": key[2], "x": key[3],
                             "score": None if scores is None else float(scores[i]),
                             "rank": None if ranks is None else int(ranks[i])})
        record = {
            "round": max([r["round"] for r in self.rounds], default=0) + 1,
            "created": _now(), "status": "exported", "note": note,
            "directory": os.path.relpath(directory.resolve(), self.path.parent.resolve()),
            "pool": {"n_patches": len(patches), "sources": list(patches.sources)},
            "model": _model_record(model_name, model),
            "hunter": _hunter_record(hunter),
            "selected": selected,
            "labels": None, "trained": [],
        }
        self.rounds.append(record)
        self.save()
        return int(record["round"])

    def read_round(self, number: int, require_all: bool = True) -> Any:
        """Read the corrected masks of round ``number`` back as :class:`~biodatacentric.Patches`.

        Records, per patch, a hash of the mask, its foreground fraction and whether the
        person changed the starting mask.
        """
        rec = self.round(number)
        directory = self._directory(rec)
        labelled = Patches.read_annotations(directory, require_all=require_all)
        status = {s["id"]: s for s in annotation_status(directory)}
        masks = labelled.masks()
        prov = labelled.provenance()
        by_key = {(s["source"], s["z"], s["y"], s["x"]): s["export_id"] for s in rec["selected"]}
        labels = []
        for k in range(len(labelled)):
            key = (str(prov.source[k]), int(prov.z[k]), int(prov.y[k]), int(prov.x[k]))
            pid = by_key.get(key)
            labels.append({"export_id": pid, "mask_sha256": _sha256(masks[k].astype(np.uint8)),
                           "foreground_fraction": float(masks[k].mean()),
                           "edited": status.get(pid, {}).get("edited")})
        rec["labels"] = {"read": _now(), "n_labelled": len(labelled),
                         "n_edited": sum(1 for lab in labels if lab["edited"]), "patches": labels}
        rec["status"] = "annotated"
        self.save()
        return labelled

    def record_model(self, number: int, name: str, model: Any, metrics: dict | None = None,
                     note: str = "") -> None:
        """Record the model trained with round ``number``'s labels (e.g. ``"M1"``) and its metrics."""
        rec = self.round(number)
        entry = _model_record(name, model)
        entry["metrics"] = to_jsonable(metrics or {})
        entry["recorded"] = _now()
        entry["note"] = note
        rec["trained"].append(entry)
        rec["status"] = "trained"
        self.save()

    def summary(self) -> list[dict]:
        """One flat row per round: round, status, model, selected sources, n edited, trained models."""
        rows = []
        for r in self.rounds:
            rows.append({"round": r["round"], "status": r["status"], "model": r["model"]["name"],
                         "n_selected": len(r["selected"]),
                         "selected": [f"{Path(s['source']).stem}:z{s['z']}:y{s['y']}:x{s['x']}"
                                      for s in r["selected"]],
                         "n_edited": None if r["labels"] is None else r["labels"]["n_edited"],
                         "trained": {t["name"]: t["metrics"] for t in r["trained"]}})
        return rows

    def _directory(self, rec: dict) -> Path:
        d = Path(rec["directory"])
        return d if d.is_absolute() else (self.path.parent / d)


def _model_record(name: str, model: Any) -> dict:
    out: dict[str, Any] = {"name": str(name)}
    if model is None:
        return out
    out["class"] = f"{type(model).__module__}.{type(model).__qualname__}"
    if _module_of(model) is not None:
        out["fingerprint"] = model_fingerprint(model)
    if hasattr(model, "get_params") and not isinstance(model, torch.nn.Module):
        params = {}
        for k, v in model.get_params(deep=False).items():
            try:
                params[k] = to_jsonable(v)
            except TypeError:
                params[k] = repr(type(v).__name__)
        out["params"] = params
    return out


def _hunter_record(hunter: Any) -> dict | None:
    if hunter is None:
        return None
    params = {}
    for k, v in hunter.get_params(deep=False).items():
        if k == "segmenter":
            continue
        try:
            params[k] = to_jsonable(v)
        except TypeError:
            params[k] = type(v).__name__
    return {"class": f"{type(hunter).__module__}.{type(hunter).__qualname__}", "params": params,
            "seed": getattr(hunter, "seed_", None)}
