"""Share a fitted :class:`~biodatacentric.TransUNetSegmenter` as a bioimage.io model package.

:func:`export_bioimageio` writes a folder that the bioimage.io tools (``bioimageio.spec``,
``bioimageio.core``, deepImageJ, ilastik, the BioImage Model Zoo) read:

* ``rdf.yaml`` -- the model description, format 0.5: input ``raw`` (batch, channel, y, x at the
  training patch size) with ``scale_range`` (0.5 / 99.8 percentiles per sample) and ``clip``
  preprocessing, output ``logits`` (one channel per class; the label is the arg-max over
  channels), both weight formats below, and under ``config.biodatacentric`` the estimator's
  parameters and training history;
* ``weights.pt`` -- ``pytorch_state_dict`` weights whose architecture is the library's
  :class:`~biodatacentric.nn.transunet.TransUNet` (``import_from: biodatacentric.nn.transunet``
  with its keyword arguments);
* ``weights.torchscript`` -- the same network traced with TorchScript, for tools that run a model
  without the library;
* ``test_input.npy`` / ``test_output.npy`` -- a patch and the network's output on it;
* ``README.md`` -- the model card: training data (sources, patch count, fine-tuning rounds with
  their new (core set / critical) patches), validation Dice when the model was validated, the
  library and torch versions, and how to use it. A segmenter's own card (``card_``, see
  :mod:`biodatacentric.segment._card`: data fingerprint and embedding summary, annotation
  rounds, validation, monitor calibration, time and memory) is printed there and stored whole
  under ``config.biodatacentric.model_card``; :func:`from_bioimageio` reads it back.

:func:`from_bioimageio` reads such a folder back into a segmenter **without running code from
it**: the architecture named in ``rdf.yaml`` must be the library's ``TransUNet`` (looked up in
the library's fixed module registry, never imported by name), the ``pytorch_state_dict`` file
must match the sha256 in ``rdf.yaml``, and it is read with ``torch.load(weights_only=True)``.
The TorchScript file is never loaded on import: ``torch.jit.load`` would run the serialized
program (TorchScript code, not arbitrary Python, but still code that came with the folder).

``bioimageio.spec`` (``pip install 'biodatacentric[bioimageio]'``) is needed only by
:func:`validate_bioimageio`; export and import need nothing beyond the core dependencies.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import to_jsonable
from .._version import __version__
from ..base import _load_state_checked
from ..data import make_vessels
from ..nn import build_module, module_name
from ..segment._card import ModelCard

__all__ = ["export_bioimageio", "from_bioimageio", "validate_bioimageio"]

_ARCH_MODULE = "biodatacentric.nn.transunet"
_ARCH_CALLABLE = "TransUNet"
_CITE = {"text": "Cao et al. (2025), data-centric deep learning for bioimage analysis, npj Imaging 3:29",
         "url": "https://www.nature.com/npjimaging/"}


def _dump_yaml(obj: dict) -> str:
    """YAML through PyYAML when installed; otherwise JSON, which is valid YAML (no new dependency)."""
    try:
        import yaml
    except ImportError:
        return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` (plain data only, never objects), or JSON without PyYAML."""
    try:
        import yaml
    except ImportError:
        return json.loads(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from exc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    try:
        return to_jsonable(value)
    except TypeError:
        return None


def _scale_range(x: np.ndarray, lo: float = 0.5, hi: float = 99.8, eps: float = 1e-6) -> np.ndarray:
    """bioimage.io ``scale_range`` over (y, x) per sample and channel, then ``clip`` to [0, 1]."""
    p_lo = np.percentile(x, lo, axis=(-2, -1), keepdims=True)
    p_hi = np.percentile(x, hi, axis=(-2, -1), keepdims=True)
    return np.clip((x - p_lo) / (p_hi - p_lo + eps), 0.0, 1.0).astype(np.float32)


def _training_data(est: Any, training_data: Any) -> dict:
    info: dict[str, Any] = {}
    if training_data is not None:
        if isinstance(training_data, dict):
            info.update(_jsonable(training_data))
        else:  # Patches
            prov = training_data.provenance()
            srcs = sorted({str(s) for s in prov.source})
            info.update({"n_patches": int(len(training_data)), "sources": srcs,
                         "patch_shape": [int(v) for v in training_data.patch_shape]})
    rounds = []
    for i, h in enumerate(getattr(est, "fine_tune_history_", []) or []):
        rounds.append({"round": i, "n_new_patches": int(h.get("n_new", 0)),
                       "n_replay_per_epoch": int(h.get("n_replay_per_epoch", 0)),
                       "epochs": len(h.get("loss", []))})
    info["fine_tune_rounds"] = rounds
    return info


def _validation_dice(est: Any) -> float | None:
    """The validation Dice of the best epoch of the latest training run that was validated."""
    runs = [(est.history_, getattr(est, "best_epoch_", None))]
    runs += [(h, h.get("best_epoch")) for h in getattr(est, "fine_tune_history_", []) or []]
    for hist, best in reversed(runs):
        vals = hist.get("val_dice") or []
        if vals:
            return float(vals[best] if best is not None and 0 <= best < len(vals) else max(vals))
    return None


def _model_card(name: str, est: Any, data: dict, dice: float | None, version: str, classes: list[str]) -> str:
    lines = [f"# {name}", "",
             "A TransUNet vessel segmenter trained with "
             f"[biodatacentric](https://pypi.org/project/biodatacentric/) {version} (torch {torch.__version__}).", "",
             "## Input and output", "",
             f"- input `raw`: one single-channel patch of {est.patch_shape_[0]} x {est.patch_shape_[1]} pixels "
             "(batch, channel, y, x), scaled to its 0.5 / 99.8 percentiles and clipped to [0, 1] "
             "(the library scales per stack; per patch here, as bioimage.io tools apply it);",
             f"- output `logits`: one channel per class ({', '.join(classes)}); the label is the arg-max.", "",
             "## Training data", ""]
    if data.get("sources"):
        lines.append(f"- {data.get('n_patches', '?')} patches of {data.get('patch_shape')} pixels from "
                     f"{len(data['sources'])} source(s):")
        lines += [f"  - `{s}`" for s in data["sources"]]
    else:
        lines.append("- sources not recorded (pass `training_data=` to `export_bioimageio`)")
    for key, value in data.items():
        if key not in ("sources", "n_patches", "patch_shape", "fine_tune_rounds"):
            lines.append(f"- {key}: {value}")
    rounds = data.get("fine_tune_rounds", [])
    lines.append(f"- initial fit: {len(est.history_.get('loss', []))} epochs")
    if rounds:
        lines.append(f"- {len(rounds)} fine-tuning round(s) on new patches (core-set / critical-patch rounds):")
        lines += [f"  - round {r['round']}: {r['n_new_patches']} new patches, {r['epochs']} epochs" for r in rounds]
    else:
        lines.append("- no fine-tuning rounds")
    lines += ["", "## Validation", "",
              f"- validation Dice (foreground, best epoch of the latest validated training run): {dice:.4f}" if dice is not None
              else "- not validated during training (no `validation=` patches were given)",
              "", "## Use", "",
              "```python", "from biodatacentric import TransUNetSegmenter",
              "seg = TransUNetSegmenter.from_bioimageio('this_folder')",
              "labels = seg.predict_image('stack.tif', axes='ZYX', out='labels.tif')", "```", "",
              "Cite: " + _CITE["text"] + ".", ""]
    return "\n".join(lines)


def export_bioimageio(est: Any, path: str | os.PathLike, *, name: str | None = None,
                      training_data: Any = None, authors: list[str] | None = None,
                      class_names: list[str] | None = None, test_input: Any = None) -> Path:
    """Write a fitted segmenter as a bioimage.io model package (format 0.5) into the folder ``path``.

    See the module docstring for the files. The folder is built next to ``path`` and renamed
    into place when complete; an existing ``path`` is never replaced (``FileExistsError``).

    Parameters
    ----------
    est : TransUNetSegmenter
        A fitted segmenter.
    path : folder
    name : str, optional
        The model name (default: "biodatacentric TransUNet vessel segmenter").
    training_data : Patches or dict, optional
        The patches the model was trained on (their sources and count go into the model
        card), or a dict of facts to record (e.g. ``{"core_set_rounds": 2}``).
    authors : list of str, optional
    class_names : list of str, optional
        One per class (default ``background``, ``vessel`` / ``class<i>``).
    test_input : array (H, W), optional
        The test patch (raw intensities, the training patch size); default a patch of the
        library's synthetic vessels.

    Returns
    -------
    Path
        The folder; ``path / "rdf.yaml"`` is its description.
    """
    est._check_is_fitted()
    module = est.module_
    if module_name(module) != _ARCH_CALLABLE:
        raise TypeError(f"export_bioimageio exports the library's TransUNet; this segmenter's network is "
                        f"{type(module).__name__}")
    dest = Path(path)
    if dest.exists():
        raise FileExistsError(f"{dest} exists; choose a new folder (an export never replaces one)")
    H, W = (int(v) for v in est.patch_shape_)
    n_classes = int(module.n_classes) if hasattr(module, "n_classes") else int(est.n_classes)
    classes = list(class_names) if class_names else (
        ["background", "vessel"] if n_classes == 2 else ["background"] + [f"class{i}" for i in range(1, n_classes)])
    if len(classes) != n_classes:
        raise ValueError(f"class_names has {len(classes)} names but the model has {n_classes} classes")
    if test_input is None:
        img, _ = make_vessels((max(H, 64), max(W, 64)), random_state=0)
        test_input = img[:H, :W]
    raw = np.asarray(test_input, dtype=np.float32)
    if raw.shape != (H, W):
        raise ValueError(f"test_input has shape {raw.shape}; the model takes patches of {(H, W)}")
    raw = raw[None, None]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        net = module.__class__(**module.config)
        net.load_state_dict({k: v.detach().cpu() for k, v in module.state_dict().items()})
        net.eval()
        x = torch.from_numpy(_scale_range(raw))
        with torch.no_grad():
            out = net(x).float().numpy()
        np.save(tmp / "test_input.npy", raw)
        np.save(tmp / "test_output.npy", out)
        torch.save(net.state_dict(), tmp / "weights.pt")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks fixed at the patch size
            traced = torch.jit.trace(net, x, check_trace=False)
        traced.save(str(tmp / "weights.torchscript"))
        card = getattr(est, "card_", None)
        card = card if isinstance(card, ModelCard) else None
        if training_data is None and card is not None:
            training_data = {"n_patches": card.training_data.get("n_patches"),
                             "sources": card.training_data.get("sources"),
                             "patch_shape": card.model.get("patch_shape")}
        data = _training_data(est, training_data)
        dice = _validation_dice(est)
        if dice is None and card is not None and card.validation:
            dice = float(card.validation["dice"])
        title = name or "biodatacentric TransUNet vessel segmenter"
        readme = _model_card(title, est, data, dice, __version__, classes)
        if card is not None:
            readme += "\n" + card.to_markdown()
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        torch_version = torch.__version__.split("+")[0]
        rdf = {
            "format_version": "0.5.4",
            "type": "model",
            "name": title,
            "description": "TransUNet (ViT encoder, U-Net decoder) for binary vessel segmentation of 2-D "
                           "slices, trained with biodatacentric's data-centric loop.",
            "authors": [{"name": a} for a in (authors or ["biodatacentric user"])],
            "cite": [_CITE],
            "license": "BSD-3-Clause",
            "documentation": "README.md",
            "tags": ["segmentation", "vessels", "2d", "transunet", "pytorch", "biodatacentric"],
            "timestamp": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "inputs": [{
                "id": "raw", "description": "raw intensities of one patch",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["raw"]},
                         {"type": "space", "id": "y", "size": H}, {"type": "space", "id": "x", "size": W}],
                "test_tensor": {"source": "test_input.npy", "sha256": _sha256(tmp / "test_input.npy")},
                "data": {"type": "float32"},
                "preprocessing": [
                    {"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 0.5,
                                                     "max_percentile": 99.8}},
                    {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}}],
            }],
            "outputs": [{
                "id": "logits", "description": "class scores; the label is the arg-max over channels",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": classes},
                         {"type": "space", "id": "y", "size": H}, {"type": "space", "id": "x", "size": W}],
                "test_tensor": {"source": "test_output.npy", "sha256": _sha256(tmp / "test_output.npy")},
                "data": {"type": "float32"},
            }],
            "weights": {
                "pytorch_state_dict": {
                    "source": "weights.pt", "sha256": _sha256(tmp / "weights.pt"),
                    "architecture": {"callable": _ARCH_CALLABLE, "import_from": _ARCH_MODULE,
                                     "kwargs": _jsonable(module.config)},
                    "pytorch_version": torch_version,
                    "dependencies": None,
                },
                "torchscript": {"source": "weights.torchscript", "sha256": _sha256(tmp / "weights.torchscript"),
                                "pytorch_version": torch_version, "parent": "pytorch_state_dict"},
            },
            "config": {"biodatacentric": {
                "version": __version__, "params": _jsonable(est.get_params(deep=False)),
                "patch_shape": [H, W], "training_data": data, "validation_dice": dice,
                "history": _jsonable(est.history_), "best_epoch": _jsonable(getattr(est, "best_epoch_", None)),
                "fine_tune_history": _jsonable(getattr(est, "fine_tune_history_", []) or []),
                "model_card": card.to_dict() if card is not None else None,
            }},
        }
        rdf["weights"]["pytorch_state_dict"].pop("dependencies")
        (tmp / "rdf.yaml").write_text(_dump_yaml(rdf), encoding="utf-8")
        if dest.exists():
            raise FileExistsError(f"{dest} appeared while exporting; choose a new folder")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _read_rdf(folder: Path) -> dict:
    rdf_path = folder / "rdf.yaml" if folder.is_dir() else folder
    if not rdf_path.is_file():
        raise FileNotFoundError(f"{rdf_path} does not exist; pass the folder of a bioimage.io model (it holds rdf.yaml)")
    try:
        rdf = _load_yaml(rdf_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{rdf_path} is not valid YAML ({exc})") from exc
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise ValueError(f"{rdf_path} does not describe a bioimage.io model (type: model)")
    return rdf


def from_bioimageio(cls: type, path: str | os.PathLike, **params_override: Any) -> Any:
    """A segmenter rebuilt from a bioimage.io package written by :func:`export_bioimageio`.

    Only the ``pytorch_state_dict`` weights are read (see the module docstring for why the
    TorchScript file is not): the architecture must be ``biodatacentric.nn.transunet.TransUNet``
    (built through the library's module registry with the ``kwargs`` of ``rdf.yaml``), the
    file's sha256 must match ``rdf.yaml`` and it is loaded with ``weights_only=True``. Errors
    name the file and what is wrong.
    """
    folder = Path(path)
    rdf = _read_rdf(folder)
    folder = folder if folder.is_dir() else folder.parent
    rdf_path = folder / "rdf.yaml"
    sd = (rdf.get("weights") or {}).get("pytorch_state_dict")
    if not isinstance(sd, dict):
        raise ValueError(f"{rdf_path} has no pytorch_state_dict weights; only those can be imported safely")
    arch = sd.get("architecture") or {}
    if arch.get("import_from") != _ARCH_MODULE or arch.get("callable") != _ARCH_CALLABLE:
        raise ValueError(f"{rdf_path} names the architecture {arch.get('import_from')}:{arch.get('callable')}; "
                         f"only {_ARCH_MODULE}:{_ARCH_CALLABLE} can be imported (nothing is imported by name)")
    source = str(sd.get("source", ""))
    weights = (folder / source).resolve()
    if not source or folder.resolve() not in weights.parents or not weights.is_file():
        raise FileNotFoundError(f"{rdf_path} lists the weights file {source!r}, which is not a file inside {folder}")
    if sd.get("sha256") and _sha256(weights) != sd["sha256"]:
        raise ValueError(f"{weights} does not match the sha256 in {rdf_path}; the file was changed or damaged")
    kwargs = arch.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"{rdf_path}: architecture kwargs must be a mapping")
    module = build_module(_ARCH_CALLABLE, kwargs)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read {weights} as plain tensors ({exc}); it is damaged or holds pickled "
                         "objects, which are refused") from exc
    _load_state_checked(module, state, weights, rdf_path)
    module.eval()
    cfg = ((rdf.get("config") or {}).get("biodatacentric") or {})
    params = {k: v for k, v in (cfg.get("params") or {}).items() if v is not None and k != "encoder"}
    valid = set(cls().get_params(deep=False))
    est = cls(**{**{k: v for k, v in params.items() if k in valid}, **params_override})
    decoder = getattr(module, "decoder", None)
    if "coarse_head" not in params_override and decoder is not None and getattr(decoder, "aux", 1) is None:
        est.coarse_head = None   # a network without the coarse head (saved before it was the default)
    size = [ax.get("size") for ax in rdf["inputs"][0]["axes"] if ax.get("type") == "space"]
    est.patch_shape_ = tuple(int(v) for v in (cfg.get("patch_shape") or size))
    est.module_ = module
    est.history_ = cfg.get("history") or {"loss": []}
    est.best_epoch_ = cfg.get("best_epoch")
    est.fine_tune_history_ = list(cfg.get("fine_tune_history") or [])
    est.encoder_transfer_ = {"source": str(rdf_path), "loaded": sorted(module.state_dict()), "initialised": [],
                             "unused": []}
    if cfg.get("model_card"):
        est.card_ = ModelCard.from_dict(cfg["model_card"], where=f"{rdf_path} (config.biodatacentric.model_card)")
    return est


def validate_bioimageio(path: str | os.PathLike) -> Any:
    """Validate a package with ``bioimageio.spec`` (the ``bioimageio`` extra); raise ``ValueError``
    with the validation summary when it is not valid, return the model description otherwise."""
    try:
        from bioimageio.spec import load_description
    except ImportError as exc:
        raise ImportError("validating needs bioimageio.spec: pip install 'biodatacentric[bioimageio]'") from exc
    folder = Path(path)
    descr = load_description(folder / "rdf.yaml" if folder.is_dir() else folder, perform_io_checks=True)
    status = getattr(descr.validation_summary, "status", None)
    if status not in ("passed", "valid-format"):
        raise ValueError(f"{folder} is not a valid bioimage.io model:\n{descr.validation_summary.format()}")
    return descr
