"""``TransUNetSegmenter``: train, fine-tune without forgetting, and segment whole stacks."""

from __future__ import annotations

import copy
import json
import math
import os
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._io import torch_load_safe, torch_save_atomic
from .._params import Interval, Options, validate_params
from .._train import TrainSettings, array_fingerprint, train
from .._utils import autocast, check_random_state_int, resolve_device, resolve_precision
from ..base import BioEstimator, register_estimator
from ..data.augment import batch_flip_rot90, batch_intensity_jitter
from ..metrics import dice_per_sample
from ..nn.presets import ENCODER_KEYS, PRESETS, get_preset
from ..nn.transunet import DROPOUT_PLACES, TransUNet
from ..nn.vit import ViTEncoder, encoder_state_report
from .losses import segmentation_loss
from .sliding import sliding_window_predict

__all__ = ["TransUNetSegmenter", "resolve_encoder", "augment_batch", "small_rotation_batch"]


# ---------------------------------------------------------------------- encoder sources
def _find_vit_prefix(state: dict) -> str | None:
    cands = [k[: -len("patch_embed.proj.weight")] for k in state if k.endswith("patch_embed.proj.weight")]
    cands = [c for c in cands if not c.startswith("decoder")]
    return min(cands, key=len) if cands else None


def _vit_state(state: dict, where: str) -> tuple[dict, list[str]]:
    """Strip the prefix in front of the ViT tensors; return (state, names of other tensors)."""
    if "model" in state and isinstance(state["model"], dict):  # facebookresearch/mae checkpoints
        state = state["model"]
    prefix = _find_vit_prefix(state)
    if prefix is None:
        raise ValueError(f"{where} holds no ViT encoder weights (no '*patch_embed.proj.weight' tensor); pass an "
                         "MAEPretrainer save folder, a ViTEncoder or its state dict")
    vit = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)
           and not k[len(prefix):].startswith(("decoder", "mask_token"))}
    other = sorted(k for k in state if k not in {prefix + n for n in vit})
    return vit, other


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
        state, _ = _vit_state(encoder.state_dict(), f"module {type(encoder).__name__}")
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
                    state, _ = _vit_state(raw, str(f))
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
            state, _ = _vit_state(raw, str(path))
            return state, config, str(path)
        raise FileNotFoundError(f"encoder={str(path)!r} does not exist; pass a save folder, a .pt file, a "
                                "ViTEncoder or a state dict")
    if isinstance(encoder, dict):
        if not all(isinstance(v, torch.Tensor) for v in encoder.get("model", encoder).values()):
            raise TypeError("encoder= state dict must map names to tensors")
        state, _ = _vit_state(encoder, "the encoder state dict")
        return {k: v.detach().cpu() for k, v in state.items()}, config, "state dict"
    raise TypeError(f"encoder= must be None, an nn.Module, a folder/file path or a state dict, got "
                    f"{type(encoder).__name__}")


# ---------------------------------------------------------------------- augmentation
def small_rotation_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, max_degrees: float = 20.0,
                         p: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each sample with probability ``p`` by an angle in ``±max_degrees``.

    Bilinear for the image, nearest for the mask, reflection at the borders. Always draws the
    same number of random values, so the generator state does not depend on the data.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(4, 1, 16, 16, generator=g); y = (x[:, 0] > 0.5).long()
    >>> xr, yr = small_rotation_batch(x, y, g, p=1.0)    # rotate every sample
    >>> tuple(xr.shape), yr.dtype, bool((xr != x).any())
    ((4, 1, 16, 16), torch.int64, True)
    """
    n = x.shape[0]
    apply = torch.rand(n, generator=generator) < p
    ang = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
    if not bool(apply.any()):
        return x, y
    sel = apply.nonzero(as_tuple=True)[0]
    c, s = torch.cos(ang[sel]), torch.sin(ang[sel])
    theta = torch.zeros(len(sel), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = c, -s, s, c
    grid = F.affine_grid(theta, list(x[sel].shape), align_corners=False).to(x.dtype)
    x, y = x.clone(), y.clone()
    x[sel] = F.grid_sample(x[sel], grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    ym = F.grid_sample(y[sel][:, None].float(), grid, mode="nearest", padding_mode="reflection",
                       align_corners=False)
    y[sel] = ym[:, 0].round().to(y.dtype)
    return x, y


def augment_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Training augmentation: random square symmetry (flips + 90° rotations; flips only for
    non-square patches), small rotations (p=0.25, ±20°) and mild intensity jitter (×1±0.1, ±0.05).

    ``x`` is ``(B, 1, H, W)`` float, ``y`` ``(B, H, W)`` integer labels.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(4, 1, 16, 16, generator=g); y = (x[:, 0] > 0.5).long()
    >>> xa, ya = augment_batch(x, y, g)
    >>> tuple(xa.shape), tuple(ya.shape), sorted(ya.unique().tolist())
    ((4, 1, 16, 16), (4, 16, 16), [0, 1])
    """
    if x.shape[-1] == x.shape[-2]:
        x, y = batch_flip_rot90(x, y, generator=generator)
    else:
        code = torch.randint(0, 4, (x.shape[0],), generator=generator)
        fh, fw = (code % 2 == 1), (code // 2 == 1)
        x, y = x.clone(), y.clone()
        x[fh], y[fh] = x[fh].flip(-1), y[fh].flip(-1)
        x[fw], y[fw] = x[fw].flip(-2), y[fw].flip(-2)
    x, y = small_rotation_batch(x, y, generator)
    x = batch_intensity_jitter(x, generator=generator)
    return x, y


# ---------------------------------------------------------------------- the estimator
@register_estimator
class TransUNetSegmenter(BioEstimator):
    """TransUNet segmentation on the shared ViT encoder (MAE weights transfer 1:1).

    The network (:class:`~biodatacentric.nn.transunet.TransUNet`) is a ViT encoder with
    UNETR-style skips taken after the blocks at 1/4, 1/2 and 3/4 of the depth, a light CNN
    stem for the full- and half-resolution skips, and a cascaded upsampler with
    ``Dropout2d`` before every decoder block and the head. Training uses the shared loop:
    AdamW (no decay on biases/norms/positions), linear warmup then cosine decay per
    iteration, bf16 autocast where fast, checkpoints with exact resume.

    Parameters
    ----------
    preset : {"tiny", "small", "base"}
        Encoder size (see :mod:`biodatacentric.nn.presets`). With ``encoder=`` the sizes of the
        given encoder win (shape-inferred; ``num_heads`` from its config or the preset).
    encoder : nn.Module, path or dict, optional
        Pretrained encoder: ``mae.encoder_`` (a ``ViTEncoder``), an ``MAEPretrainer`` save
        folder, a ``.pt`` file or a state dict. Every encoder tensor must load (shape
        mismatches and missing tensors raise); the report is ``encoder_transfer_``.
    n_classes : int
        Number of classes including background.
    img_size : int, optional
        Training patch size (square); defaults to the patches' size.
    feature_size : int
        Full-resolution decoder width (doubles per level).
    max_epochs, batch_size, lr, weight_decay, warmup_epochs : training schedule
        Peak learning rate ``lr`` reached after ``warmup_epochs`` (at most 10 % of the run),
        then cosine decay to 0 per iteration (``schedule="poly"`` gives TransUNet's
        ``(1 - t)^0.9``).
    schedule : {"cosine", "poly", "constant"}
    loss : {"ce+dice", "ce", "dice"}
        ``"ce+dice"`` = 0.5 cross-entropy + 0.5 soft Dice.
    dice : {"foreground", "all"}
        Classes averaged in the soft Dice (see :func:`~biodatacentric.segment.losses.soft_dice_loss`).
    augment : bool
        Flips, 90° rotations, small rotations (p=0.25, ±20°) and intensity jitter.
    decoder_dropout : float
        ``Dropout2d`` rate in the decoder (kept for MC-dropout sampling at the same rate).
        The default 0 keeps the decoder deterministic, as in the published TransUNet: MC
        dropout then samples the transformer's MLP dropout (``MCDropoutHunter(mode="full")``).
        Set it (e.g. 0.1) to allow the much cheaper ``mode="decoder_only"`` on large pools.
    decoder_dropout_at : {"head", "last", "blocks"}
        Where a non-zero decoder dropout sits: before the 1x1 head only (default), also before
        the full-resolution decoder block, or before every decoder block. ``"head"`` lets
        ``MCDropoutHunter(mode="decoder_only")`` compute every decoder feature once and re-run
        only the head per sample. Decoder dropout lowers test Dice, the most when it sits
        before every block (measured in ``benchmarks/RESULTS.md``, segmenter section).
    mlp_dropout : float
        Dropout inside every transformer MLP.
    attn_dropout : float
        Attention dropout.
    norm : {"group", "batch", "instance"}
        Decoder normalisation (GroupNorm is stable with small batches).
    layer_decay : float, optional
        Layer-wise learning-rate decay for the encoder (e.g. 0.75 when fine-tuning MAE weights).
    device : str
        ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
    precision : {"auto", "bf16", "fp32"}
    random_state : int, optional
        Seeds initialisation, sample order, augmentation and dropout.
    checkpoint_dir : str, optional
        Folder for checkpoints (``checkpoint.pt`` every epoch, ``best.pt``); an interrupted
        ``fit`` with the same settings resumes from it.
    progress : bool, optional
        Progress bars (default: when stderr is a terminal).

    Attributes
    ----------
    module_ : TransUNet
    history_ : dict
        ``loss``, ``lr``, ``epoch_time`` and (with validation) ``val_dice`` per epoch.
    best_epoch_ : int or None
        Epoch (0-based) whose weights were kept (best validation Dice); None without validation.
    encoder_transfer_ : dict
        ``source``, ``loaded``, ``initialised`` and ``unused`` tensor names.
    patch_shape_ : tuple
    fine_tune_history_ : list of dict

    Examples
    --------
    >>> from biodatacentric import Patches, make_vessels
    >>> from biodatacentric.segment import TransUNetSegmenter
    >>> img, mask = make_vessels((64, 64), random_state=0)
    >>> p = Patches.from_arrays(img, patch_shape=(32, 32), masks=mask)
    >>> seg = TransUNetSegmenter(preset="tiny", feature_size=4, max_epochs=1, batch_size=4,
    ...                          precision="fp32", random_state=0).fit(p)
    >>> seg.predict_proba(p).shape
    (4, 2, 32, 32)
    >>> seg.predict_image(img).shape
    (64, 64)
    """

    _fitted_attribute = "history_"
    _parameter_constraints: dict = {
        "preset": [Options(tuple(PRESETS))],
        "encoder": [None, nn.Module, "path", dict],
        "n_classes": [Interval(Integral, 2, None)],
        "img_size": [None, Interval(Integral, 1, None)],
        "feature_size": [Interval(Integral, 1, None)],
        "max_epochs": [Interval(Integral, 1, None)],
        "batch_size": [Interval(Integral, 1, None)],
        "lr": [Interval(Real, 0.0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0.0, None)],
        "warmup_epochs": [Interval(Real, 0.0, None)],
        "schedule": [Options(("cosine", "poly", "constant"))],
        "loss": [Options(("ce+dice", "ce", "dice"))],
        "dice": [Options(("foreground", "all"))],
        "augment": ["boolean"],
        "decoder_dropout": [Interval(Real, 0.0, 1.0, closed="left")],
        "mlp_dropout": [Interval(Real, 0.0, 1.0, closed="left")],
        "attn_dropout": [Interval(Real, 0.0, 1.0, closed="left")],
        "norm": [Options(("group", "batch", "instance"))],
        "decoder_dropout_at": [Options(DROPOUT_PLACES)],
        "layer_decay": [None, Interval(Real, 0.0, 1.0, closed="right")],
        "device": ["device"],
        "precision": [Options(("auto", "bf16", "fp32"))],
        "random_state": ["random_state"],
        "checkpoint_dir": [None, "path"],
        "progress": [None, "boolean"],
    }

    def __init__(self, preset: str = "small", encoder: Any = None, n_classes: int = 2, img_size: int | None = None,
                 feature_size: int = 16, max_epochs: int = 50, batch_size: int = 8, lr: float = 5e-4,
                 weight_decay: float = 0.01, warmup_epochs: float = 2.0, schedule: str = "cosine",
                 loss: str = "ce+dice", dice: str = "foreground", augment: bool = True,
                 decoder_dropout: float = 0.0, mlp_dropout: float = 0.1, attn_dropout: float = 0.0,
                 norm: str = "group", decoder_dropout_at: str = "head", layer_decay: float | None = None,
                 device: str = "auto", precision: str = "auto", random_state: int | None = None,
                 checkpoint_dir: str | None = None, progress: bool | None = None) -> None:
        self.preset = preset
        self.encoder = encoder
        self.n_classes = n_classes
        self.img_size = img_size
        self.feature_size = feature_size
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.schedule = schedule
        self.loss = loss
        self.dice = dice
        self.augment = augment
        self.decoder_dropout = decoder_dropout
        self.mlp_dropout = mlp_dropout
        self.attn_dropout = attn_dropout
        self.norm = norm
        self.decoder_dropout_at = decoder_dropout_at
        self.layer_decay = layer_decay
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.checkpoint_dir = checkpoint_dir
        self.progress = progress

    # ------------------------------------------------------------------ building
    def _runtime(self) -> tuple[torch.device, str]:
        dev = resolve_device(self.device)
        return dev, resolve_precision(self.precision, dev)

    def initialize(self, patch_shape: tuple[int, int] | None = None) -> "TransUNetSegmenter":
        """Build ``module_`` and load ``encoder`` (no training); ``fit`` calls this.

        Sets ``module_``, ``encoder_transfer_`` and ``patch_shape_``.
        """
        self._validate_params()
        if patch_shape is None:
            if self.img_size is None:
                raise ValueError("give patch_shape or set img_size")
            patch_shape = (int(self.img_size), int(self.img_size))
        patch_shape = (int(patch_shape[0]), int(patch_shape[1]))
        state, known, source = (None, {}, None) if self.encoder is None else resolve_encoder(self.encoder)
        cfg = get_preset(self.preset)
        enc_cfg = {k: cfg[k] for k in ENCODER_KEYS}
        enc_cfg.update(in_chans=1, qkv_bias=True, cls_token=True, img_size=self.img_size or patch_shape[0])
        if state is not None:
            inferred = _infer_vit_config(state)
            enc_cfg.update({k: v for k, v in known.items() if k in enc_cfg or k == "num_heads"})
            enc_cfg.update(inferred)
            if enc_cfg["embed_dim"] % enc_cfg["num_heads"]:
                raise ValueError(f"the encoder has embed_dim={enc_cfg['embed_dim']} which num_heads="
                                 f"{enc_cfg['num_heads']} (from preset {self.preset!r}) does not divide; pass "
                                 "the preset the encoder was trained with")
        p = enc_cfg["patch_size"]
        if patch_shape[0] % p or patch_shape[1] % p:
            raise ValueError(f"patch shape {patch_shape} is not divisible by the ViT patch size {p}; cut patches "
                             f"whose sides are multiples of {p}")
        if enc_cfg["in_chans"] != 1:
            raise ValueError(f"the encoder expects {enc_cfg['in_chans']} input channels; the segmenter works on "
                             "single-channel patches")
        seed = check_random_state_int(self.random_state)
        self._seed = seed
        torch.manual_seed(seed)
        module = TransUNet(n_classes=int(self.n_classes), drop=float(self.mlp_dropout),
                           attn_drop=float(self.attn_dropout), decoder_dropout=float(self.decoder_dropout),
                           feature_size=int(self.feature_size), norm=self.norm,
                           decoder_dropout_at=self.decoder_dropout_at, **enc_cfg)
        if state is not None:
            report = encoder_state_report(module, state, prefix="encoder.")
            missing = [k for k in report["initialised"] if k.startswith("encoder.")]
            if missing or not report["loaded"]:
                raise ValueError(f"the encoder from {source} lacks {len(missing)} tensors of the segmenter's "
                                 f"encoder (e.g. {missing[:3]}); pass a complete ViT encoder")
            self.encoder_transfer_ = {"source": source, **report}
        else:
            self.encoder_transfer_ = {"source": None, "loaded": [],
                                      "initialised": sorted(module.state_dict()), "unused": []}
        self.module_ = module
        self.patch_shape_ = patch_shape
        return self

    # ------------------------------------------------------------------ training
    @staticmethod
    def _load_arrays(patches: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
        from ..data import as_patches

        p = as_patches(patches, name=name, need_masks=True)
        return p.images(), p.masks()

    def _check_labels(self, y: np.ndarray, name: str) -> None:
        if y.size and int(y.max()) >= int(self.n_classes):
            raise ValueError(f"{name} holds label {int(y.max())} but n_classes={self.n_classes}")

    def _settings(self, max_epochs: int, lr: float, batch_size: int, checkpoint_dir: str | None) -> TrainSettings:
        dev, prec = self._runtime()
        return TrainSettings(max_epochs=int(max_epochs), batch_size=int(batch_size), lr=float(lr),
                             weight_decay=float(self.weight_decay), betas=(0.9, 0.999),
                             warmup_epochs=float(self.warmup_epochs), schedule=self.schedule,
                             layer_decay=self.layer_decay, device=str(dev), precision=prec,
                             checkpoint_dir=checkpoint_dir, seed=int(self._seed), progress=self.progress,
                             grad_clip=1.0)

    def _run_training(self, X: np.ndarray, Y: np.ndarray, settings: TrainSettings, epoch_order: Any,
                      validation: tuple[np.ndarray, np.ndarray] | None, desc: str,
                      data_extra: dict | None = None) -> tuple[dict, int | None]:
        module = self.module_
        data_fp = None
        if settings.checkpoint_dir:
            # a checkpoint resumes only a run on the same data: every byte of the training and
            # validation images and masks (in memory already; the paper's sets are small), and
            # how an epoch mixes new and replayed patches
            val_x, val_y = validation if validation is not None else (None, None)
            data_fp = array_fingerprint(X, Y, val_x, val_y, extra=data_extra)
        dev = torch.device(settings.device)
        module.to(dev)
        Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y.astype(np.int64))
        augment, loss_kind, dice_kind = bool(self.augment), self.loss, self.dice

        def step(m: nn.Module, idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
            sel = torch.as_tensor(np.asarray(idx, dtype=np.int64))
            x, y = Xt[sel][:, None], Yt[sel]
            if augment:
                x, y = augment_batch(x, y, gen)
            logits = m(x.to(dev))
            return segmentation_loss(logits, y.to(dev), loss_kind, dice_kind)

        history: dict = {"loss": [], "lr": [], "epoch_time": []}
        best_path = Path(settings.checkpoint_dir) / "best.pt" if settings.checkpoint_dir else None
        best: dict = {"state": None}
        if validation is not None:
            history["val_dice"] = []
            Xv, Yv = validation

            def on_epoch_end(epoch: int, hist: dict) -> None:
                d = self._dice_of(Xv, Yv)
                prev = hist["val_dice"]
                if not prev or d > max(prev):
                    best["state"] = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                    if best_path is not None:
                        torch_save_atomic({"module": best["state"], "epoch": epoch}, best_path)
                prev.append(d)
                module.train()
        else:
            on_epoch_end = None  # type: ignore[assignment]
        history = train(module, step, len(X), settings, epoch_order=epoch_order, on_epoch_end=on_epoch_end,
                        history=history, desc=desc, layer_of=module.layer_id if self.layer_decay else None,
                        interrupt_after=getattr(self, "_interrupt_after", None), data_fingerprint=data_fp)
        best_epoch = None
        if validation is not None and history.get("val_dice"):
            best_epoch = int(np.argmax(history["val_dice"]))
            state = best["state"]
            if state is None and best_path is not None and best_path.is_file():  # resumed run
                state = torch_load_safe(best_path)["module"]
            if state is not None:
                module.load_state_dict(state)
        module.eval()
        return history, best_epoch

    def fit(self, patches: Any, y: None = None, validation: Any = None) -> "TransUNetSegmenter":
        """Train on patches with masks.

        Parameters
        ----------
        patches : Patches or (n, h, w) array with masks
            Training patches (already normalised: the Patches' per-source rule). Read into
            memory once (float32 images + uint8 masks).
        y : None
            Ignored (masks travel with the patches).
        validation : Patches with masks, optional
            Held-out patches (split by stack, not by tile): foreground Dice after every
            epoch goes to ``history_["val_dice"]`` and the best epoch's weights are kept.
        """
        self._validate_params()
        X, Y = self._load_arrays(patches, "patches")
        self._check_labels(Y, "patches")
        val = None
        if validation is not None:
            val = self._load_arrays(validation, "validation")
            self._check_labels(val[1], "validation")
        self.initialize(X.shape[1:])
        settings = self._settings(self.max_epochs, self.lr, self.batch_size, self.checkpoint_dir)
        self.history_, self.best_epoch_ = self._run_training(X, Y, settings, None, val, "fit")
        self.fine_tune_history_ = []
        return self

    def fine_tune(self, new: Any, replay: Any = None, *, n_replay: int | None = None,
                  max_epochs: int | None = None, lr: float | None = None, batch_size: int | None = None,
                  validation: Any = None) -> "TransUNetSegmenter":
        """Continue training from the current weights on new annotations, replaying old ones.

        Every epoch visits all ``new`` patches plus ``n_replay`` patches drawn afresh (without
        replacement) from ``replay``, shuffled together -- the paper's round of 3 critical +
        7 core patches per epoch is ``fine_tune(new3, replay=core, n_replay=7)``. Without
        ``replay`` this is naive fine-tuning (prone to forgetting).

        Parameters
        ----------
        new : Patches with masks
            The newly annotated patches (same patch shape as the training patches).
        replay : Patches with masks, optional
            Old annotated patches (the core set the model was trained on).
        n_replay : int, optional
            Old patches per epoch; default ``round(7 / 3 * len(new))`` (the paper's 7:3 mix),
            capped at ``len(replay)``.
        max_epochs : int, optional
            Default ``self.max_epochs``.
        lr : float, optional
            Peak learning rate; default ``lr / 5`` (warmup then cosine as in ``fit``).
        batch_size : int, optional
            Default ``self.batch_size``.
        validation : Patches with masks, optional
            Best-epoch selection as in :meth:`fit`.
        """
        self._check_is_fitted()
        self._validate_params()
        validate_params({"n_replay": n_replay, "max_epochs": max_epochs, "lr": lr, "batch_size": batch_size},
                        {"n_replay": [None, Interval(Integral, 0, None)],
                         "max_epochs": [None, Interval(Integral, 1, None)],
                         "lr": [None, Interval(Real, 0.0, None, closed="neither")],
                         "batch_size": [None, Interval(Integral, 1, None)]}, "TransUNetSegmenter.fine_tune")
        Xn, Yn = self._load_arrays(new, "new")
        self._check_labels(Yn, "new")
        if Xn.shape[1:] != tuple(self.patch_shape_):
            raise ValueError(f"new patches are {Xn.shape[1:]} but the model was trained on {tuple(self.patch_shape_)}")
        n_new = len(Xn)
        if replay is not None:
            Xo, Yo = self._load_arrays(replay, "replay")
            self._check_labels(Yo, "replay")
            if Xo.shape[1:] != Xn.shape[1:]:
                raise ValueError(f"replay patches are {Xo.shape[1:]} but new patches are {Xn.shape[1:]}")
            k = int(round(7 / 3 * n_new)) if n_replay is None else int(n_replay)
            if k < 0:
                raise ValueError(f"n_replay must be >= 0, got {n_replay}")
            k = min(k, len(Xo))
            X, Y = np.concatenate([Xn, Xo]), np.concatenate([Yn, Yo])
        else:
            if n_replay:
                raise ValueError("n_replay was given without replay patches")
            k, X, Y = 0, Xn, Yn
        n_old = len(X) - n_new

        def epoch_order(epoch: int, gen: torch.Generator) -> np.ndarray:
            old = (torch.randperm(n_old, generator=gen)[:k] + n_new) if k else torch.empty(0, dtype=torch.long)
            both = torch.cat([torch.arange(n_new), old])
            return both[torch.randperm(len(both), generator=gen)].numpy()

        val = None
        if validation is not None:
            val = self._load_arrays(validation, "validation")
        round_no = len(getattr(self, "fine_tune_history_", []) or [])
        ckpt = str(Path(self.checkpoint_dir) / f"fine_tune_{round_no}") if self.checkpoint_dir else None
        if not hasattr(self, "_seed"):
            self._seed = check_random_state_int(self.random_state)
        settings = self._settings(max_epochs or self.max_epochs, lr or self.lr / 5, batch_size or self.batch_size, ckpt)
        settings.seed = int(self._seed) + 1 + round_no
        history, best_epoch = self._run_training(X, Y, settings, epoch_order, val, f"fine_tune {round_no}",
                                                 data_extra={"n_new": n_new, "n_replay": k})
        history["n_new"], history["n_replay_per_epoch"], history["best_epoch"] = n_new, k, best_epoch
        self.fine_tune_history_ = list(getattr(self, "fine_tune_history_", []) or []) + [history]
        return self

    # ------------------------------------------------------------------ inference
    def _window_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (float32, CPU) of a batch ``(B, 1, h, w)`` in eval mode."""
        dev, prec = self._runtime()
        module = self.module_
        if next(module.parameters()).device != dev:
            module.to(dev)
        module.eval()
        p = module.patch_size
        h, w = x.shape[-2:]
        ph, pw = (-h) % p, (-w) % p
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        with torch.inference_mode(), autocast(dev, prec):
            logits = module(x.to(dev))
        return torch.softmax(logits.float(), dim=1)[..., :h, :w].cpu()

    def _proba_array(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        bs = int(batch_size or max(self.batch_size, 16))
        out = np.empty((len(X), self.module_.n_classes, *X.shape[1:]), dtype=np.float32)
        for s in range(0, len(X), bs):
            out[s:s + bs] = self._window_proba(torch.from_numpy(np.ascontiguousarray(X[s:s + bs]))[:, None]).numpy()
        return out

    def _dice_of(self, X: np.ndarray, Y: np.ndarray) -> float:
        pred = self._proba_array(X).argmax(1)
        return _mean_foreground_dice(pred, Y, int(self.module_.n_classes))

    def predict_proba(self, patches: Any, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities ``(n, n_classes, h, w)`` float32 of already normalised patches."""
        from ..data import as_patches

        self._check_is_fitted()
        p = as_patches(patches, name="patches")
        bs = int(batch_size or max(self.batch_size, 16))
        out = np.empty((len(p), self.module_.n_classes, *p.patch_shape), dtype=np.float32)
        for imgs, _, idx in p.iter_batches(bs, with_masks=False):
            out[idx] = self._window_proba(torch.from_numpy(imgs)[:, None]).numpy()
        return out

    def predict(self, patches: Any, batch_size: int | None = None) -> np.ndarray:
        """Label maps ``(n, h, w)`` uint8 (argmax of :meth:`predict_proba`)."""
        return self.predict_proba(patches, batch_size).argmax(1).astype(np.uint8)

    def score(self, patches: Any, y: None = None) -> float:
        """Mean foreground Dice over patches (both empty counts 1.0; classes 1..C-1 averaged)."""
        from ..data import as_patches

        self._check_is_fitted()
        p = as_patches(patches, name="patches", need_masks=True)
        return _mean_foreground_dice(self.predict(p), p.masks(), int(self.module_.n_classes))

    def predict_image(self, image: Any, axes: str = "YX", overlap: float = 0.5, blend: str = "gaussian",
                      batch_size: int | None = None, return_proba: bool = False, normalize: Any = "percentile",
                      progress: bool | None = None, out: Any = None, overwrite: bool = False) -> Any:
        """Segment a whole slice or stack with blended sliding windows.

        Windows of the training patch size (``patch_shape_``) slide with step
        ``window * (1 - overlap)``; softmax probabilities are averaged with Gaussian weights
        (``blend="gaussian"``, sigma = window / 8) or uniformly (``"constant"``). Windows of
        consecutive slices are batched; a stack is processed slice by slice, holding only the
        slices in flight besides the output.

        Parameters
        ----------
        image : array (Y, X) or (Z, Y, X), or path to a TIFF file or Zarr array
            Raw intensities (a path is read lazily, one slice at a time). They are
            normalised like :class:`~biodatacentric.Patches` do per source: with the default
            ``normalize="percentile"`` the 0.5 and 99.8 percentiles of the whole array
            (sampled from up to 16 evenly spaced slices) map to 0 and 1, then clipped. Pass
            the same ``normalize`` as for the training patches, or ``"none"`` for an image
            that is already normalised.
        axes : {"YX", "ZYX"}
        overlap : float in [0, 1)
        blend : {"gaussian", "constant"}
        batch_size : int, optional
            Windows per forward pass (default ``max(batch_size, 16)``).
        return_proba : bool
            Return float32 probabilities ``(C, Y, X)`` / ``(Z, C, Y, X)`` instead of uint8 labels
            ``(Y, X)`` / ``(Z, Y, X)``.
        normalize : str, (mean, std) or Normalization
        progress : bool, optional
        out : path or zarr array, optional
            Where to write the result instead of only returning it; the path's suffix
            chooses the format, and any other suffix is an error:

            * ``.tif`` / ``.tiff``: an ImageJ TIFF that Fiji and napari open at scale
              (axes ``ZYX`` / ``YX``, with ``C`` for probabilities), carrying the pixel size
              of ``image`` when it is a TIFF that states one (see
              :func:`~biodatacentric.data.writers.read_pixel_size`). Written atomically;
              the in-memory result is returned.
            * ``.zarr`` (or a Zarr array): filled slice by slice as each slice is finished
              (for stacks larger than memory; needs the ``zarr`` extra). A path is filled as
              ``<out>.partial`` and renamed to ``out`` when complete; the finished array is
              returned (opened read-only). Chunks hold one slice (``(1, C, Y, X)`` or
              ``(1, Y, X)``). With the ``ome-zarr`` extra installed the path becomes an
              OME-NGFF image (array ``0`` with multiscales, typed axes in micrometres and the
              input TIFF's pixel size; see :mod:`biodatacentric.data.ngff`); without it, a
              plain Zarr array as in earlier versions.
        overwrite : bool
            Replace an existing ``out`` path (otherwise it raises ``FileExistsError``).

        Examples
        --------
        >>> import tempfile, pathlib
        >>> import numpy as np, tifffile
        >>> from biodatacentric import Patches, TransUNetSegmenter, make_vessels
        >>> img, mask = make_vessels((2, 64, 64), random_state=0)
        >>> patches = Patches.from_arrays([img], masks=[mask], axes="ZYX", patch_shape=(32, 32))
        >>> seg = TransUNetSegmenter(preset="tiny", max_epochs=1, random_state=0).fit(patches)
        >>> tmp = tempfile.TemporaryDirectory()
        >>> labels = seg.predict_image(img, axes="ZYX", out=pathlib.Path(tmp.name) / "pred.tif")
        >>> tifffile.imread(pathlib.Path(tmp.name) / "pred.tif").shape == labels.shape == img.shape
        True
        >>> tmp.cleanup()
        """
        from ..data.normalize import as_normalization
        from ..data.readers import ArraySource
        from .._validation import check_axes

        self._check_is_fitted()
        suffix = None
        if isinstance(out, (str, os.PathLike)):
            from ..data.writers import check_output_suffix

            suffix = check_output_suffix(out)
            if Path(out).exists() and not overwrite:
                raise FileExistsError(f"{out} exists; pass overwrite=True to replace it or choose another name")
        if isinstance(image, (str, os.PathLike)):  # a file, read lazily slice by slice
            from ..parallel import open_source

            axes = check_axes(axes, source=str(image))
            if axes not in ("YX", "ZYX"):
                raise ValueError(f"axes={axes!r}: predict_image takes a single-channel image ('YX') or stack ('ZYX')")
            src = open_source(image, axes, as_normalization(normalize))
        else:
            arr = np.asarray(image) if not isinstance(image, np.ndarray) else image
            axes = check_axes(axes, arr.ndim, source="image")
            if axes not in ("YX", "ZYX"):
                raise ValueError(f"axes={axes!r}: predict_image takes a single-channel image ('YX') or stack ('ZYX')")
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
                raise TypeError(f"image must be numeric, got dtype {arr.dtype}")
            if arr.size == 0:
                raise ValueError(f"image is empty (shape {arr.shape})")
            src = ArraySource(arr, axes, name="image", normalization=as_normalization(normalize))
        off, scale, clip = src.norm_params()
        Z, H, W = src.shape

        def read(z: int) -> np.ndarray:
            sl = np.asarray(src.array[z] if isinstance(src, ArraySource) else src.read_slice(z), dtype=np.float32)
            if not np.all(np.isfinite(sl)):
                raise ValueError(f"image slice {z} holds NaN or inf; repair or mask those pixels first")
            sl = (sl - np.float32(off)) * np.float32(scale)
            return np.clip(sl, 0.0, 1.0, out=sl) if clip else sl

        n_classes = int(self.module_.n_classes)

        def run(target: Any = None) -> Any:
            return sliding_window_predict(read, Z, (H, W), self._window_proba, n_classes,
                                          tuple(self.patch_shape_), overlap=overlap, blend=blend,
                                          batch_size=int(batch_size or max(self.batch_size, 16)),
                                          return_proba=return_proba, progress=progress, out=target)

        if out is None or suffix in (".tif", ".tiff"):
            res = run()
            res = res[0] if axes == "YX" else res
            if out is not None:
                from ..data.writers import read_pixel_size, write_tiff

                pixel_size = None
                if isinstance(image, (str, os.PathLike)) and Path(image).suffix.lower() in (".tif", ".tiff"):
                    pixel_size = read_pixel_size(image)
                write_tiff(out, res, axes=("C" if return_proba else "") + "YX" if axes == "YX"
                           else ("ZCYX" if return_proba else "ZYX"), pixel_size=pixel_size, overwrite=True)
            return res
        from ..data.ngff import write_image_zarr
        from ..data.writers import read_pixel_size

        per_slice = (n_classes, H, W) if return_proba else (H, W)
        shape = per_slice if axes == "YX" else (Z, *per_slice)
        chunks = per_slice if axes == "YX" else (1, *per_slice)
        attrs = {"biodatacentric": {"content": "probabilities" if return_proba else "labels",
                                    "axes": ("C" if return_proba else "") + "YX" if axes == "YX"
                                    else ("ZCYX" if return_proba else "ZYX"),
                                    "source": str(src.name)}}
        tif_in = isinstance(image, (str, os.PathLike)) and Path(image).suffix.lower() in (".tif", ".tiff")
        return write_image_zarr(out, shape, chunks, np.float32 if return_proba else np.uint8, run, attrs=attrs,
                                axes=attrs["biodatacentric"]["axes"], overwrite=overwrite, stack_view=axes == "YX",
                                pixel_size=read_pixel_size(image) if tif_in else None)

    def predict_files(self, images: Any, axes: str = "ZYX", out: Any = None, *, client: Any = None,
                      return_proba: bool = False, overwrite: bool = False, **kwargs: Any) -> list:
        """Segment many stacks with :meth:`predict_image`, one task per stack.

        Parameters
        ----------
        images : list of paths (TIFF files, Zarr arrays) or arrays
            The stacks (or single images, with ``axes="YX"``). Paths are read lazily where
            the work runs; arrays travel with their task.
        axes : {"ZYX", "YX"}
        out : folder, optional
            ``None`` returns the results as in-memory arrays. A folder: each result is
            written slice by slice to ``<out>/<name>.zarr`` (``name`` = the input's file name
            without suffix, ``image<i>`` for arrays; see :meth:`predict_image`) and the list
            of those paths is returned. Results already complete there are kept, so a rerun
            after an interruption resumes (pass ``overwrite=True`` to recompute them).
        client : dask.distributed.Client, None or False
            Run the stacks in parallel on this Dask cluster (``None``: the active client, if
            any; ``False``: in this process). The model is sent to each worker once;
            results are identical to a single-process run. With ``out``, the folder must be
            reachable from the workers (a shared file system).
        return_proba : bool
            Probabilities instead of labels.
        overwrite : bool
            Recompute and replace existing outputs.
        **kwargs
            ``overlap``, ``blend``, ``batch_size``, ``normalize``, ``progress`` of
            :meth:`predict_image`.

        Returns
        -------
        list
            One array (``out=None``) or Zarr path per input, in order.
        """
        from ..parallel import map_items, output_name, resolve_client, worker_copy

        self._check_is_fitted()
        items = [images] if isinstance(images, (str, os.PathLike, np.ndarray)) else list(images)
        if not items:
            raise ValueError("images is empty; pass at least one path or array")
        unknown = sorted(set(kwargs) - {"overlap", "blend", "batch_size", "normalize", "progress"})
        if unknown:
            raise TypeError(f"predict_files got unexpected keyword arguments {unknown}")
        targets: list[str | None] = [None] * len(items)
        if out is not None:
            names = [output_name(item, i) for i, item in enumerate(items)]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"inputs {dup} would write to the same output name; rename the files")
            targets = [os.path.join(os.fspath(out), f"{n}.zarr") for n in names]
            os.makedirs(os.fspath(out), exist_ok=True)
        todo = [i for i, t in enumerate(targets) if t is None or overwrite or not os.path.exists(t)]
        dask_client = resolve_client(client)
        est = worker_copy(self, precision=self._runtime()[1]) if dask_client is not None else self
        results = map_items(est._predict_one, [(items[i], targets[i]) for i in todo], client=dask_client or False,
                            axes=axes, return_proba=return_proba, overwrite=overwrite, **kwargs)
        done = list(targets)
        for i, res in zip(todo, results):
            done[i] = res
        return done

    def _predict_one(self, job: tuple, **kwargs: Any) -> Any:
        """One stack of :meth:`predict_files` (runs where the task runs, never distributes)."""
        item, target = job
        res = self.predict_image(item, out=target, **kwargs)
        return target if target is not None else res

    # ------------------------------------------------------------------ save / load
    def _load_extra(self, folder: Path, config: dict) -> None:
        if hasattr(self, "patch_shape_"):
            self.patch_shape_ = tuple(int(v) for v in self.patch_shape_)

    # ------------------------------------------------------------------ test cases
    @classmethod
    def _test_cases(cls) -> list:
        from .._testing import EstimatorCase
        from ..data import Patches, make_vessels

        def data() -> Any:
            img, mask = make_vessels((64, 64), random_state=3)
            return Patches.from_arrays(img, patch_shape=(32, 32), stride=16, masks=mask)

        def fit(est: "TransUNetSegmenter") -> "TransUNetSegmenter":
            p = data()
            return est.fit(p[:7], validation=p[7:])

        common = dict(preset="tiny", feature_size=4, max_epochs=2, batch_size=4, precision="fp32", device="cpu",
                      random_state=0, progress=False)
        return [
            EstimatorCase(make=lambda: cls(**common), fit=fit, use=lambda e: e.predict_proba(data()[:2]),
                          result=lambda e: e.predict_proba(data()[:3]), name="tiny-group", atol=1e-5),
            EstimatorCase(make=lambda: cls(**{**common, "norm": "batch", "loss": "ce", "augment": False}),
                          fit=lambda e: e.fit(data()), use=lambda e: e.score(data()),
                          result=lambda e: e.predict_image(np.asarray(data().images([0])[0]), return_proba=True),
                          name="tiny-batchnorm", atol=1e-5),
        ]

    # ------------------------------------------------------------------ bioimage.io
    def export_bioimageio(self, path: str | os.PathLike, **kwargs: Any) -> Path:
        """Write this fitted model as a bioimage.io package (``rdf.yaml``, weights, model card).

        See :func:`biodatacentric.integrations.bioimageio.export_bioimageio` for the files
        and ``kwargs`` (``name``, ``training_data``, ``authors``, ``class_names``, ``test_input``).
        """
        from ..integrations.bioimageio import export_bioimageio

        return export_bioimageio(self, path, **kwargs)

    @classmethod
    def from_bioimageio(cls, path: str | os.PathLike, **params_override: Any) -> "TransUNetSegmenter":
        """A segmenter from a bioimage.io package written by :meth:`export_bioimageio`.

        Reads only the ``pytorch_state_dict`` weights (``weights_only=True``, architecture from
        the library's registry); see :func:`biodatacentric.integrations.bioimageio.from_bioimageio`.
        """
        from ..integrations.bioimageio import from_bioimageio

        return from_bioimageio(cls, path, **params_override)


def _mean_foreground_dice(pred: np.ndarray, true: np.ndarray, n_classes: int) -> float:
    scores = [dice_per_sample(pred == c, true == c) for c in range(1, n_classes)]
    return float(np.mean(np.mean(scores, axis=0)))
