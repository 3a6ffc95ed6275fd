"""``TransUNetSegmenter``: train, fine-tune without forgetting, and segment whole stacks."""

from __future__ import annotations

import inspect
import os
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._params import Interval, Options, validate_params
from .._train import TrainSettings
from .._utils import autocast, check_random_state_int, resolve_device, resolve_precision
from ..base import BioEstimator, register_estimator
from ..data import Patches, as_patches
from ..data.augment import augment_batch, small_rotation_batch  # noqa: F401  (public names of this module)
from ..nn.presets import ENCODER_KEYS, PRESETS, get_preset
from ..nn.transunet import DROPOUT_PLACES, TransUNet
from ..nn.vit import encoder_state_report
from ..nn.weights import _infer_vit_config, resolve_encoder
from . import _card
from ._fit import initialize_network, mean_foreground_dice, run_training
from ._inference import predict_files, predict_image

__all__ = ["TransUNetSegmenter", "resolve_encoder", "augment_batch", "small_rotation_batch"]


# ---------------------------------------------------------------------- the estimator
@register_estimator
class TransUNetSegmenter(BioEstimator):
    """TransUNet segmentation on the shared ViT encoder (MAE weights transfer 1:1).

    The network (:class:`~biodatacentric.nn.transunet.TransUNet`) is a ViT encoder with
    UNETR-style skips taken after the blocks at 1/4, 1/2 and 3/4 of the depth, a light CNN
    stem for the full- and half-resolution skips, and a cascaded upsampler with
    ``Dropout2d`` before every decoder block and the head. By default (``coarse_head="fuse"``)
    a coarse prediction made from the transformer's features alone is added to the output, so
    the ViT cannot be bypassed. Training uses the shared loop:
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
    max_time : float, optional
        Seconds that :meth:`fit` may train for. Training then ends at the last whole epoch
        that fits (at most ``max_epochs``; at least one), and the learning-rate schedule is
        re-fitted to end there (see :mod:`biodatacentric._train`); ``history_["epochs_planned"]``
        holds, after every epoch, the epoch it was then set to end at. :func:`biodatacentric.plan` sets it from a time budget. A
        run that reaches the limit depends on the machine's speed, so it is reproducible only
        when the limit is not reached. :meth:`fine_tune` takes its own ``max_time``.
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
    network : nn.Module, optional
        Train this segmentation network instead of a TransUNet (e.g. a MONAI ``UNet`` with
        ``spatial_dims=2, in_channels=1, out_channels=n_classes``): any module mapping a
        ``(B, 1, h, w)`` batch to ``(B, n_classes, h, w)`` logits. It is copied, never changed
        in place (its initial weights are yours: the same network and ``random_state`` give
        the same model); ``preset``, ``encoder``, ``feature_size``, the dropout settings and
        ``norm`` do not apply to it. To :meth:`save` and :meth:`load` the fitted model, its class must
        be registered with :func:`biodatacentric.nn.register_module` and keep its constructor
        arguments in ``self.config`` (loading never imports a class by name). The hunter's MC
        dropout samples the network's own dropout modules.
    coarse_head : {"fuse", "aux", None}
        A 1x1 head on the level-2 decoder feature, which is made from the transformer's
        features alone (before the CNN stem's skips join). ``"fuse"`` (default): its logits are
        upsampled (bilinear, x4) and added to the output logits, a coarse-plus-fine residual
        the decoder cannot route around, so the prediction depends on the ViT. ``"aux"``: the
        logits only feed the ``deep_supervision`` loss. ``None``: no head, the decoder before
        issue 20, which at small budgets segments from the stem's skips and ignores the ViT.
        On the cohort benchmark (88 steps, uniform picks, 5 seeds) ``"fuse"`` raised macro Dice
        over ``None`` by +0.014 ± 0.005 at K = 25 and +0.013 ± 0.007 at K = 10, and replacing
        its ViT features by their mean cost 0.035-0.038 (``None``: 0.000-0.010); MAE weights
        still did not help (+0.003 ± 0.006 / −0.004 ± 0.004). ``"aux"`` with deep supervision
        and ``stem_skip_drop`` left the ViT unused (``benchmarks/results/evidence_transfer_coarse.md``).
        Models saved before this option load as ``None``.
    deep_supervision : float
        Weight of an auxiliary loss on the coarse head's logits (upsampled to the patch; the
        same ``loss``): total loss = loss(output) + ``deep_supervision`` x loss(coarse). Needs
        ``coarse_head``; 0 (default) adds no loss. Set at ``fit``; ``fine_tune`` keeps using it.
    stem_skip_drop : float
        Probability, per training sample, that the CNN stem's full- and half-resolution skips
        are zeroed, so that the decoder must also segment from the transformer path. Training
        only (never at prediction; MC-dropout hunting does not switch it on). Default 0.

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
    card_ : ModelCard
        The model card (training-data fingerprint and embedding summary, annotation rounds,
        validation Dice, monitor calibration, time and memory); saved as ``model_card.json``
        and read by :func:`biodatacentric.rank_models`. See :mod:`biodatacentric.segment._card`.

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
        "max_time": [None, Interval(Real, 0.0, None, closed="neither")],
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
        "network": [None, nn.Module],
        "deep_supervision": [Interval(Real, 0.0, None)],
        "stem_skip_drop": [Interval(Real, 0.0, 1.0, closed="left")],
        "coarse_head": [None, Options(("aux", "fuse"))],
    }

    def __init__(self, preset: str = "small", encoder: Any = None, n_classes: int = 2, img_size: int | None = None,
                 feature_size: int = 16, max_epochs: int = 50, batch_size: int = 8, lr: float = 5e-4,
                 weight_decay: float = 0.01, warmup_epochs: float = 2.0, schedule: str = "cosine",
                 loss: str = "ce+dice", dice: str = "foreground", augment: bool = True,
                 decoder_dropout: float = 0.0, mlp_dropout: float = 0.1, attn_dropout: float = 0.0,
                 norm: str = "group", decoder_dropout_at: str = "head", layer_decay: float | None = None,
                 device: str = "auto", precision: str = "auto", random_state: int | None = None,
                 checkpoint_dir: str | None = None, progress: bool | None = None,
                 network: nn.Module | None = None, deep_supervision: float = 0.0,
                 stem_skip_drop: float = 0.0, coarse_head: str | None = "fuse",
                 max_time: float | None = None) -> None:
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
        self.network = network
        self.deep_supervision = deep_supervision
        self.stem_skip_drop = stem_skip_drop
        self.coarse_head = coarse_head
        self.max_time = max_time

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
        if self.deep_supervision and self.coarse_head is None:
            raise ValueError(f"deep_supervision={self.deep_supervision:g} trains a coarse head: pass coarse_head='aux' "
                             "or 'fuse', or deep_supervision=0")
        if self.network is not None:
            return initialize_network(self, patch_shape)
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
                           decoder_dropout_at=self.decoder_dropout_at, aux_head={None: False, "aux": True, "fuse": "fuse"}[self.coarse_head],
                           stem_skip_drop=float(self.stem_skip_drop), **enc_cfg)
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
    def _load_arrays(patches: Patches | np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        p = as_patches(patches, name=name, need_masks=True)
        return p.images(), p.masks()

    def _check_labels(self, y: np.ndarray, name: str) -> None:
        if y.size and int(y.max()) >= int(self.n_classes):
            raise ValueError(f"{name} holds label {int(y.max())} but n_classes={self.n_classes}")

    def _settings(self, max_epochs: int, lr: float, batch_size: int, checkpoint_dir: str | None,
                  max_time: float | None = None) -> TrainSettings:
        dev, prec = self._runtime()
        return TrainSettings(max_epochs=int(max_epochs), batch_size=int(batch_size), lr=float(lr),
                             weight_decay=float(self.weight_decay), betas=(0.9, 0.999),
                             warmup_epochs=float(self.warmup_epochs), schedule=self.schedule,
                             layer_decay=self.layer_decay, device=str(dev), precision=prec,
                             checkpoint_dir=checkpoint_dir, seed=int(self._seed), progress=self.progress,
                             grad_clip=1.0, max_time=None if max_time is None else float(max_time))

    def fit(self, patches: Patches | np.ndarray, y: None = None, validation: Patches | np.ndarray | None = None) -> "TransUNetSegmenter":
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
        settings = self._settings(self.max_epochs, self.lr, self.batch_size, self.checkpoint_dir, self.max_time)
        meter = _card.Meter(settings.device)
        self.history_, self.best_epoch_ = run_training(self, X, Y, settings, None, val, "fit")
        self.fine_tune_history_ = []
        self.card_ = _card.new_card(self, patches, X, meter, None if val is None else len(val[0]))
        return self

    def fine_tune(self, new: Patches | np.ndarray, replay: Patches | np.ndarray | None = None, *,
                  n_replay: int | None = None, max_epochs: int | None = None, lr: float | None = None,
                  batch_size: int | None = None, max_time: float | None = None,
                  validation: Patches | np.ndarray | None = None) -> "TransUNetSegmenter":
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
        max_time : float, optional
            Seconds this round may train for (as ``max_time`` of :meth:`fit`; not inherited).
        validation : Patches with masks, optional
            Best-epoch selection as in :meth:`fit`.
        """
        self._check_is_fitted()
        self._validate_params()
        validate_params({"n_replay": n_replay, "max_epochs": max_epochs, "lr": lr, "batch_size": batch_size,
                         "max_time": max_time},
                        {"n_replay": [None, Interval(Integral, 0, None)],
                         "max_time": [None, Interval(Real, 0.0, None, closed="neither")],
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
        settings = self._settings(max_epochs or self.max_epochs, lr or self.lr / 5, batch_size or self.batch_size, ckpt,
                                  max_time)
        settings.seed = int(self._seed) + 1 + round_no
        meter = _card.Meter(settings.device)
        history, best_epoch = run_training(self, X, Y, settings, epoch_order, val, f"fine_tune {round_no}",
                                             data_extra={"n_new": n_new, "n_replay": k})
        history["n_new"], history["n_replay_per_epoch"], history["best_epoch"] = n_new, k, best_epoch
        self.fine_tune_history_ = list(getattr(self, "fine_tune_history_", []) or []) + [history]
        _card.add_round(self, new, k, n_old, history, meter, None if val is None else len(val[0]))
        return self

    def _n_classes_out(self) -> int:
        """Classes the fitted network predicts (a TransUNet says so; a user's network has n_classes)."""
        return int(getattr(self.module_, "n_classes", self.n_classes))

    # ------------------------------------------------------------------ inference
    def _window_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (float32, CPU) of a batch ``(B, 1, h, w)`` in eval mode."""
        dev, prec = self._runtime()
        module = self.module_
        if next(module.parameters()).device != dev:
            module.to(dev)
        module.eval()
        p = int(getattr(module, "patch_size", 1) or 1)
        h, w = x.shape[-2:]
        ph, pw = (-h) % p, (-w) % p
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        with torch.inference_mode(), autocast(dev, prec):
            logits = module(x.to(dev))
        return torch.softmax(logits.float(), dim=1)[..., :h, :w].cpu()

    def _proba_array(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        bs = int(batch_size or max(self.batch_size, 16))
        out = np.empty((len(X), self._n_classes_out(), *X.shape[1:]), dtype=np.float32)
        for s in range(0, len(X), bs):
            out[s:s + bs] = self._window_proba(torch.from_numpy(np.ascontiguousarray(X[s:s + bs]))[:, None]).numpy()
        return out

    def _dice_of(self, X: np.ndarray, Y: np.ndarray) -> float:
        pred = self._proba_array(X).argmax(1)
        return mean_foreground_dice(pred, Y, self._n_classes_out())

    def predict_proba(self, patches: Patches | np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities ``(n, n_classes, h, w)`` float32 of already normalised patches."""
        self._check_is_fitted()
        p = as_patches(patches, name="patches")
        bs = int(batch_size or max(self.batch_size, 16))
        out = np.empty((len(p), self._n_classes_out(), *p.patch_shape), dtype=np.float32)
        for imgs, _, idx in p.iter_batches(bs, with_masks=False):
            out[idx] = self._window_proba(torch.from_numpy(imgs)[:, None]).numpy()
        return out

    def predict(self, patches: Patches | np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Label maps ``(n, h, w)`` uint8 (argmax of :meth:`predict_proba`)."""
        return self.predict_proba(patches, batch_size).argmax(1).astype(np.uint8)

    def score(self, patches: Patches | np.ndarray, y: None = None) -> float:
        """Mean foreground Dice over patches (both empty counts 1.0; classes 1..C-1 averaged)."""
        self._check_is_fitted()
        p = as_patches(patches, name="patches", need_masks=True)
        return mean_foreground_dice(self.predict(p), p.masks(), self._n_classes_out())

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
              input TIFF's pixel size; see :mod:`biodatacentric.ngff`); without it, a
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
        return predict_image(self, image, axes=axes, overlap=overlap, blend=blend, batch_size=batch_size,
                             return_proba=return_proba, normalize=normalize, progress=progress, out=out,
                             overwrite=overwrite)

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
        return predict_files(self, images, axes=axes, out=out, client=client, return_proba=return_proba,
                             overwrite=overwrite, **kwargs)

    def _predict_one(self, job: tuple, **kwargs: Any) -> Any:
        """One stack of :meth:`predict_files` (runs where the task runs, never distributes)."""
        item, target = job
        res = self.predict_image(item, out=target, **kwargs)
        return target if target is not None else res

    # ------------------------------------------------------------------ save / load
    def _save_extra(self, folder: Path) -> None:
        _card.save_card(self, folder)          # model_card.json (plain JSON; see segment/_card.py)

    def _load_extra(self, folder: Path, config: dict) -> None:
        # saved before these options existed: the old behaviour (no aux head, no skip drop), unless
        # load(..., key=value) asked for another value than the default
        defaults = inspect.signature(type(self).__init__).parameters
        for key, old in (("deep_supervision", 0.0), ("stem_skip_drop", 0.0), ("coarse_head", None)):
            if key not in config.get("params", {}) and getattr(self, key) == defaults[key].default:
                setattr(self, key, old)
        if hasattr(self, "patch_shape_"):
            self.patch_shape_ = tuple(int(v) for v in self.patch_shape_)
        _card.load_card(self, folder)


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

