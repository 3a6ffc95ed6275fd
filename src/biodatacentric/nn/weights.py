"""Encoder and MAE checkpoint loading, in one place: one key remapping for every layout.

``resolve_encoder`` (the segmenter's ``encoder=``) and :func:`load_mae_checkpoint` (the
pretrainer's reference checkpoints) read weights with ``weights_only=True`` and rename the
keys of the layouts they accept -- the reference MAE (``facebookresearch/mae``, optionally
under ``"model"``), ``module.`` (DistributedDataParallel) prefixes, ``encoder.`` prefixes and
this library's own state dicts -- with :func:`map_reference_state`, here and nowhere else.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import torch_load_safe
from .mae import DECODER_KEYS, MaskedAutoencoder
from .vit import ViTEncoder, encoder_state_report, resize_pos_embed

__all__ = ["resolve_encoder", "load_mae_checkpoint", "map_reference_state"]

logger = logging.getLogger("biodatacentric.pretrain")  # the pretrainer reports loaded checkpoints


# ---------------------------------------------------------------------- the one key remapping
def _find_vit_prefix(state: dict) -> str | None:
    cands = [k[: -len("patch_embed.proj.weight")] for k in state if k.endswith("patch_embed.proj.weight")]
    cands = [c for c in cands if not c.startswith("decoder")]
    return min(cands, key=len) if cands else None


def _unwrap(state: dict) -> dict:
    """The state dict inside a ``{"model": ...}``, ``{"state_dict": ...}`` or ``{"module": ...}`` container."""
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state.get(wrapper), dict):
            return state[wrapper]
    return state


def _is_decoder(key: str) -> bool:
    return key.startswith(("decoder", "mask_token")) or key.split(".")[0] in DECODER_KEYS


def map_reference_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a checkpoint of any accepted layout to :class:`MaskedAutoencoder` names.

    The one key remapping of the library (the segmenter's ``encoder=`` and the pretrainer's
    reference checkpoints both use it). Unwraps ``{"model": ...}`` / ``{"state_dict": ...}``
    containers and drops entries that are not tensors; the ViT encoder's tensors, found by
    their ``patch_embed.proj.weight`` under whatever prefix (``module.`` of
    DistributedDataParallel, ``encoder.``, ``backbone.``, none), become ``encoder.*``; the
    reference decoder's tensors (:data:`~biodatacentric.nn.mae.DECODER_KEYS`) lose that
    prefix. Without a recognisable encoder (or with a bare ``module.`` prefix) every other
    tensor is an encoder tensor. Keys already in this library's layout pass unchanged.

    Examples
    --------
    >>> import torch
    >>> checkpoint = {"model": {"cls_token": torch.zeros(1, 1, 16), "blocks.0.norm1.weight": torch.ones(16),
    ...                         "mask_token": torch.zeros(1, 1, 16)}, "epoch": 399}
    >>> sorted(map_reference_state(checkpoint))
    ['encoder.blocks.0.norm1.weight', 'encoder.cls_token', 'mask_token']
    """
    tensors = {k: v for k, v in _unwrap(state).items() if isinstance(v, torch.Tensor)}
    prefix = _find_vit_prefix(tensors)
    foreign = prefix not in (None, "", "module.")   # tensors outside a named encoder are not encoder tensors
    out: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if prefix is not None and k.startswith(prefix):
            rest = k[len(prefix):]
            out[rest if _is_decoder(rest) else "encoder." + rest] = v
            continue
        k = k.removeprefix("module.")
        out[k if foreign or k.startswith("encoder.") or _is_decoder(k) else "encoder." + k] = v
    return out


def _vit_state(state: dict, where: str) -> dict:
    """The ViT encoder's tensors of a checkpoint, under :class:`ViTEncoder` names."""
    mapped = map_reference_state(state)
    if "encoder.patch_embed.proj.weight" not in mapped:
        raise ValueError(f"{where} holds no ViT encoder weights (no '*patch_embed.proj.weight' tensor); pass an "
                         "MAEPretrainer save folder, a ViTEncoder or its state dict")
    return {k[len("encoder."):]: v for k, v in mapped.items() if k.startswith("encoder.")}


def _infer_vit_config(state: dict) -> dict:
    """Encoder sizes read off the tensor shapes (all but ``num_heads``)."""
    w = state["patch_embed.proj.weight"]
    embed_dim, in_chans, patch_size = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    if not blocks:
        raise ValueError("the encoder state dict has no 'blocks.N.*' tensors")
    cfg = dict(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=max(blocks) + 1,
               mlp_ratio=float(state["blocks.0.mlp.fc1.weight"].shape[0]) / embed_dim,
               qkv_bias="blocks.0.attn.qkv.bias" in state, cls_token="cls_token" in state)
    if "pos_embed" in state:
        n = int(state["pos_embed"].shape[1]) - (1 if cfg["cls_token"] else 0)
        g = math.isqrt(n)
        if g * g != n:
            raise ValueError(f"the encoder's positional table has {n} grid rows, not a square grid")
        cfg["img_size"] = g * patch_size
    return cfg


def resolve_encoder(encoder: Any) -> tuple[dict, dict, str]:
    """Turn ``encoder=`` into ``(vit_state_dict, known_config, description)``.

    Accepts a :class:`~biodatacentric.nn.vit.ViTEncoder` (or any module holding one as
    ``.encoder``), a folder written by ``save()`` of an estimator holding a ViT encoder (an
    ``MAEPretrainer`` save folder: ``weights/*.pt`` read with ``weights_only=True``), a ``.pt``
    file holding a state dict, or a state dict (MAE layout, optionally prefixed or wrapped in
    ``{"model": ...}`` as in ``facebookresearch/mae`` checkpoints).

    Examples
    --------
    >>> from biodatacentric.nn.vit import ViTEncoder
    >>> enc = ViTEncoder(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    >>> state, config, where = resolve_encoder(enc)
    >>> where, config["depth"], tuple(state["patch_embed.proj.weight"].shape)
    ('module ViTEncoder', 1, (16, 1, 8, 8))
    >>> wrapped = {"model": {"encoder." + k: v for k, v in state.items()}}   # prefixed checkpoint
    >>> sorted(resolve_encoder(wrapped)[0]) == sorted(state)
    True
    """
    config: dict = {}
    if isinstance(encoder, nn.Module):
        vit = encoder if isinstance(encoder, ViTEncoder) else getattr(encoder, "encoder", None)
        if isinstance(vit, ViTEncoder):
            config = dict(vit.config)
            state = {k: v.detach().cpu().clone() for k, v in vit.state_dict().items()}
            return state, config, f"module {type(encoder).__name__}"
        state = _vit_state(encoder.state_dict(), f"module {type(encoder).__name__}")
        return {k: v.detach().cpu().clone() for k, v in state.items()}, config, f"module {type(encoder).__name__}"
    if isinstance(encoder, (str, os.PathLike)):
        path = Path(encoder)
        if path.is_dir():
            cfg_path = path / "config.json"
            files = sorted((path / "weights").glob("*.pt")) if (path / "weights").is_dir() else []
            if not files:
                raise FileNotFoundError(f"encoder={str(path)!r}: the folder has no weights/*.pt files; pass the "
                                        "folder written by MAEPretrainer.save()")
            specs = {}
            if cfg_path.is_file():
                try:
                    specs = json.loads(cfg_path.read_text(encoding="utf-8")).get("modules", {})
                except json.JSONDecodeError as exc:
                    raise ValueError(f"encoder={str(path)!r}: {cfg_path} is not valid JSON: {exc.msg} at line "
                                     f"{exc.lineno}, column {exc.colno}") from None
                except AttributeError:
                    raise ValueError(f"encoder={str(path)!r}: {cfg_path} was not written by save()") from None
                if not isinstance(specs, dict):
                    raise ValueError(f"encoder={str(path)!r}: {cfg_path} has no valid 'modules' entry")
            # prefer a module saved as a ViTEncoder, then any file holding ViT weights
            order = sorted(files, key=lambda f: 0 if specs.get(f.stem, {}).get("class") == "ViTEncoder" else 1)
            for f in order:
                raw = torch_load_safe(f)
                if isinstance(raw, dict) and _find_vit_prefix(raw.get("model", raw)) is not None:
                    state = _vit_state(raw, str(f))
                    spec = specs.get(f.stem, {})
                    if spec.get("class") == "ViTEncoder":
                        config = dict(spec["config"])
                    else:
                        sub = spec.get("config", {})
                        config = {k: sub[k] for k in ("num_heads",) if k in sub}
                    return state, config, str(f)
            raise ValueError(f"encoder={str(path)!r}: none of {[f.name for f in files]} holds ViT encoder weights")
        if path.is_file():
            raw = torch_load_safe(path)
            if not isinstance(raw, dict):
                raise ValueError(f"encoder={str(path)!r} does not hold a state dict")
            state = _vit_state(raw, str(path))
            return state, config, str(path)
        raise FileNotFoundError(f"encoder={str(path)!r} does not exist; pass a save folder, a .pt file, a "
                                "ViTEncoder or a state dict")
    if isinstance(encoder, dict):
        if not all(isinstance(v, torch.Tensor) for v in _unwrap(encoder).values()):
            raise TypeError("encoder= state dict must map names to tensors")
        state = _vit_state(encoder, "the encoder state dict")
        return {k: v.detach().cpu() for k, v in state.items()}, config, "state dict"
    raise TypeError(f"encoder= must be None, an nn.Module, a folder/file path or a state dict, got "
                    f"{type(encoder).__name__}")


# ---------------------------------------------------------------------- MAE checkpoints
def load_mae_checkpoint(model: MaskedAutoencoder | ViTEncoder, source: str | Path | dict) -> dict:
    """Load an MAE/ViT checkpoint in the reference layout into ``model``.

    Parameters
    ----------
    model : MaskedAutoencoder or ViTEncoder
        The target. For a bare encoder the decoder tensors are reported as unused.
    source : path or dict
        A file read with ``torch.load(weights_only=True)`` or an already loaded dict.
        Accepted layouts: the reference MAE (``facebookresearch/mae``; keys such as
        ``blocks.0.attn.qkv.weight`` and ``decoder_blocks.0...``, optionally under
        ``"model"``), the same with ``module.`` prefixes, or this library's own state dicts.

    Returns
    -------
    dict
        ``{"loaded": [...], "initialised": [...], "unused": [...], "resized": [...]}``
        with names in ``model``. Fixed sin-cos tables whose token grid differs are resized
        (listed in ``resized``); any other shape mismatch raises ``ValueError`` listing the
        tensors.

    Examples
    --------
    >>> from biodatacentric.nn.mae import MaskedAutoencoder
    >>> a = MaskedAutoencoder(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
    ...                       decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    >>> ref = {k.removeprefix("encoder."): v for k, v in a.state_dict().items()}
    >>> b = MaskedAutoencoder(**a.config)
    >>> report = load_mae_checkpoint(b, {"model": ref})
    >>> len(report["loaded"]) == len(a.state_dict()), report["initialised"]
    (True, [])
    """
    if isinstance(source, (str, Path)):
        raw = torch_load_safe(source)
        where = str(source)
    elif isinstance(source, dict):
        raw, where = source, "the given state dict"
    else:
        raise TypeError(f"source must be a path or a state dict, got {type(source).__name__}")
    if not isinstance(raw, dict):
        raise ValueError(f"{where} does not hold a state dict")
    state = map_reference_state(raw)
    if not state:
        raise ValueError(f"{where} holds no tensors")
    if isinstance(model, ViTEncoder):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")} | \
                {k: v for k, v in state.items() if not k.startswith("encoder.")}
        pos_keys = {"pos_embed": (model, model.n_prefix)}
    elif isinstance(model, MaskedAutoencoder):
        pos_keys = {"encoder.pos_embed": (model.encoder, model.n_prefix),
                    "decoder_pos_embed": (model, model.n_prefix)}
    else:
        raise TypeError(f"model must be a MaskedAutoencoder or ViTEncoder, got {type(model).__name__}")
    own = model.state_dict()
    resized = []
    for key, (_, n_prefix) in pos_keys.items():
        if key not in state or key not in own:
            continue
        src, dst = state[key], own[key]
        if src.shape == dst.shape or src.ndim != 3 or src.shape[-1] != dst.shape[-1]:
            continue
        old = _square_grid(src.shape[1] - n_prefix)
        new = _square_grid(dst.shape[1] - n_prefix)
        if old is None or new is None:
            continue
        state[key] = resize_pos_embed(src, old, new, n_prefix)
        resized.append(f"{key}: grid {old} -> {new}")
    try:
        report = encoder_state_report(model, state)
    except ValueError as exc:
        raise ValueError(f"cannot load {where}: {exc}") from None
    report["resized"] = resized
    if not report["loaded"]:
        raise ValueError(f"none of the tensors in {where} match the model; is it an MAE/ViT checkpoint in "
                         "the reference layout (keys like 'blocks.0.attn.qkv.weight')?")
    logger.info("loaded %d tensors from %s (%d left initialised, %d unused)", len(report["loaded"]), where,
                len(report["initialised"]), len(report["unused"]))
    return report


def _square_grid(n_tokens: int) -> tuple[int, int] | None:
    g = int(round(math.sqrt(n_tokens)))
    return (g, g) if g * g == n_tokens and g > 0 else None
