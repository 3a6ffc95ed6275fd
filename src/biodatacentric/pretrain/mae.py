"""Stage 1 of the BioData-Centric pipeline: masked-autoencoder pretraining and patch embeddings."""

from __future__ import annotations

import functools
import logging
import math
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._params import Interval, Options
from .._train import TrainSettings, patches_fingerprint, train
from .._utils import autocast, check_random_state_int, progress, resolve_device, resolve_precision, unit_rows
from ..base import BioEstimator, register_estimator
from ..data import Patches, as_patches
from ..data.augment import batch_flip_rot90, batch_intensity_jitter
from ..data.labels import patch_labels
from ..nn.mae import MaskedAutoencoder
from ..nn.presets import PRESETS, get_preset
from ..nn.vit import ViTEncoder
from ..nn.weights import load_mae_checkpoint
from ..parallel import map_patches, resolve_client, worker_copy
from .viz import save_reconstruction_grid as _save_grid

__all__ = ["MAEPretrainer", "load_mae_checkpoint"]

logger = logging.getLogger("biodatacentric.pretrain")

# patches are held in memory for training when they take at most this many bytes
_PRELOAD_BYTES = 2 << 30

_POS_INT = [Interval(Integral, 1, None)]
_OPT_POS_INT = [None, Interval(Integral, 1, None)]


@register_estimator
class MAEPretrainer(BioEstimator):
    """Masked-autoencoder pretraining of a ViT on unlabelled patches, and patch embeddings.

    ``fit`` trains a :class:`~biodatacentric.nn.mae.MaskedAutoencoder` (He et al. 2022):
    75 % of the tokens of every image are hidden at random, the encoder sees the rest, a
    light decoder regresses the hidden pixels. ``transform`` then embeds patches with an
    *unmasked* encoder pass (never the masked forward with ratio 0, which shuffles tokens),
    mean-pooled over tokens, optionally reduced by PCA (the paper's 256-d latent) and
    L2-normalised -- the input of :class:`~biodatacentric.KCoverSelector`.

    Learning-rate rule: with ``lr=None`` the peak learning rate is
    ``blr * batch_size * accum_steps / 256`` (MAE's linear scaling, ``blr=1.5e-4``); a given
    ``lr`` is used as is. The effective value is logged and stored in ``lr_``. Warmup is
    linear, then cosine decay to ``min_lr``, updated every iteration; warmup is clipped to
    10 % of the run (pitfall M5). Optimiser: AdamW(0.9, 0.95), weight decay 0.05 on weights
    only (no decay on biases, norms, tokens, positional tables).

    Parameters
    ----------
    preset : {"tiny", "small", "base"}
        Model sizes by name (``"base"`` = ViT-B/16 with the 512-wide, 8-block decoder of the
        paper; ``"small"`` is sized for CPUs; ``"tiny"`` for tests). Every size can be
        overridden with the parameters below that default to ``None``.
    mask_ratio : float
        Fraction of tokens hidden from the encoder (0.75 in MAE).
    max_epochs : int
        Passes over the patches.
    max_time : float, optional
        Seconds that :meth:`fit` may train for: training ends at the last whole epoch that
        fits (at most ``max_epochs``, at least one) and the learning-rate schedule is
        re-fitted to end there (:mod:`biodatacentric._train`); ``history_["epochs_planned"]``
        holds, after every epoch, the epoch it was then set to end at. :func:`biodatacentric.plan` sets it from a time budget.
        Reproducible only when the limit is not reached.
    batch_size : int
        Micro-batch size; the effective batch is ``batch_size * accum_steps``.
    lr : float, optional
        Peak learning rate; ``None`` applies the rule above.
    blr : float
        Base learning rate of the linear scaling rule.
    warmup_epochs : float
        Linear warmup length (clipped to 10 % of the run).
    min_lr, weight_decay : float
        End of the cosine schedule; AdamW weight decay.
    accum_steps : int
        Gradient accumulation steps.
    norm_pix_loss : bool
        Regress per-patch standardised pixels. Off by default (as in the authors' run); when
        on, the variance gets ``norm_pix_eps`` added and near-constant patches are left out
        of the loss (pitfall M3).
    norm_pix_eps : float
        Epsilon added to the per-patch variance with ``norm_pix_loss``.
    img_size : int, optional
        Side of the square training crops. ``None`` uses the smaller side of the patches,
        rounded down to a multiple of the ViT patch size. Patches larger than ``img_size``
        are randomly cropped during training and centre-cropped in ``transform``.
    patch_size, embed_dim, depth, num_heads, mlp_ratio : optional
        Overrides of the preset's encoder sizes.
    decoder_embed_dim, decoder_depth, decoder_num_heads : optional
        Overrides of the preset's decoder sizes.
    augment : bool
        Microscopy-safe augmentation: random crop (when patches exceed ``img_size``),
        one of the 8 flips/90-degree rotations, and mild intensity scaling (x(1 +/- 0.1),
        +/- 0.02). No heavy photometric changes (pitfall M9).
    pool : {"mean", "cls"}
        Token pooling of the embeddings.
    n_components : int or None
        Reduce embeddings with PCA fitted on the training embeddings (256 in the paper);
        ``None`` keeps the encoder width. Capped at the encoder width and the number of
        training patches.
    init_checkpoint : str, optional
        An MAE/ViT checkpoint in the reference layout (``blocks.N.attn.qkv`` naming, as
        written by ``facebookresearch/mae``) or a state dict of this library, loaded before
        training; see :func:`load_mae_checkpoint`. The load report is kept in
        ``init_report_``.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    precision : {"auto", "bf16", "fp32"}
        bf16 autocast where the hardware runs it fast (``"auto"``).
    checkpoint_dir : str, optional
        Folder for a training checkpoint written every ``checkpoint_every`` epochs. A new
        ``fit`` with the same settings resumes from it and ends with the same weights as an
        uninterrupted run (given an integer ``random_state``).
    checkpoint_every : int
        Epochs between checkpoints.
    transform_batch_size : int
        Batch size of ``transform``/``reconstruct`` (inference).
    random_state : int, optional
        Seed of weight initialisation, sample order, augmentation and masking.
    progress : bool, optional
        Show progress bars (``None``: when stderr is a terminal).

    Attributes
    ----------
    module_ : MaskedAutoencoder
        The trained encoder and decoder.
    encoder_ : ViTEncoder
        The trained encoder (``module_.encoder``, the same object).
    history_ : dict
        Per-epoch ``loss``, ``lr`` and ``epoch_time``.
    lr_ : float
        The peak learning rate used.
    img_size_ : int
        Side of the images the model was trained on.
    pca_components_, pca_mean_ : ndarray or None
        PCA fitted on the training embeddings.
    n_features_out_ : int
        Width of the embeddings returned by ``transform``.
    init_report_ : dict or None
        Which tensors ``init_checkpoint`` provided.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import Patches, make_vessels
    >>> img, _ = make_vessels((96, 96), random_state=0)
    >>> patches = Patches.from_arrays(img, patch_shape=(32, 32), stride=16)
    >>> mae = MAEPretrainer(preset="tiny", max_epochs=1, batch_size=8, n_components=None,
    ...                     precision="fp32", random_state=0).fit(patches)
    >>> emb = mae.transform(patches)
    >>> emb.shape, emb.dtype, bool(np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5))
    ((25, 32), dtype('float32'), True)
    """

    _fitted_attribute = "module_"

    _parameter_constraints: dict = {
        "preset": [Options(tuple(PRESETS))],
        "mask_ratio": [Interval(Real, 0.0, 1.0, closed="neither")],
        "max_epochs": _POS_INT,
        "batch_size": _POS_INT,
        "lr": [None, Interval(Real, 0.0, None, closed="neither")],
        "blr": [Interval(Real, 0.0, None, closed="neither")],
        "warmup_epochs": [Interval(Real, 0.0, None)],
        "min_lr": [Interval(Real, 0.0, None)],
        "weight_decay": [Interval(Real, 0.0, None)],
        "accum_steps": _POS_INT,
        "norm_pix_loss": ["boolean"],
        "norm_pix_eps": [Interval(Real, 0.0, None, closed="neither")],
        "img_size": _OPT_POS_INT,
        "patch_size": _OPT_POS_INT,
        "embed_dim": _OPT_POS_INT,
        "depth": _OPT_POS_INT,
        "num_heads": _OPT_POS_INT,
        "mlp_ratio": [None, Interval(Real, 0.0, None, closed="neither")],
        "decoder_embed_dim": _OPT_POS_INT,
        "decoder_depth": _OPT_POS_INT,
        "decoder_num_heads": _OPT_POS_INT,
        "augment": ["boolean"],
        "pool": [Options(("mean", "cls"))],
        "n_components": _OPT_POS_INT,
        "init_checkpoint": [None, "path", dict],
        "device": ["device"],
        "precision": [Options(("auto", "bf16", "fp32"))],
        "checkpoint_dir": [None, "path"],
        "checkpoint_every": _POS_INT,
        "transform_batch_size": _POS_INT,
        "random_state": ["random_state"],
        "progress": [None, "boolean"],
        "max_time": [None, Interval(Real, 0.0, None, closed="neither")],
    }

    def __init__(self, preset: str = "small", mask_ratio: float = 0.75, max_epochs: int = 100,
                 batch_size: int = 64, lr: float | None = None, blr: float = 1.5e-4,
                 warmup_epochs: float = 10, min_lr: float = 0.0, weight_decay: float = 0.05,
                 accum_steps: int = 1, norm_pix_loss: bool = False, norm_pix_eps: float = 1e-2,
                 img_size: int | None = None, patch_size: int | None = None, embed_dim: int | None = None,
                 depth: int | None = None, num_heads: int | None = None, mlp_ratio: float | None = None,
                 decoder_embed_dim: int | None = None, decoder_depth: int | None = None,
                 decoder_num_heads: int | None = None, augment: bool = True, pool: str = "mean",
                 n_components: int | None = 256, init_checkpoint: str | None = None, device: str = "auto",
                 precision: str = "auto", checkpoint_dir: str | None = None, checkpoint_every: int = 10,
                 transform_batch_size: int = 64, random_state: int | None = None,
                 progress: bool | None = None, max_time: float | None = None) -> None:
        self.preset = preset
        self.mask_ratio = mask_ratio
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.blr = blr
        self.warmup_epochs = warmup_epochs
        self.min_lr = min_lr
        self.weight_decay = weight_decay
        self.accum_steps = accum_steps
        self.norm_pix_loss = norm_pix_loss
        self.norm_pix_eps = norm_pix_eps
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        self.augment = augment
        self.pool = pool
        self.n_components = n_components
        self.init_checkpoint = init_checkpoint
        self.device = device
        self.precision = precision
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.transform_batch_size = transform_batch_size
        self.random_state = random_state
        self.progress = progress
        self.max_time = max_time

    # ------------------------------------------------------------------ helpers
    @property
    def encoder_(self) -> ViTEncoder:
        """The trained :class:`~biodatacentric.nn.vit.ViTEncoder` (``module_.encoder``)."""
        self._check_is_fitted()
        return self.module_.encoder

    def _architecture(self, img_size: int) -> dict:
        sizes = get_preset(self.preset, patch_size=self.patch_size, embed_dim=self.embed_dim, depth=self.depth,
                           num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                           decoder_embed_dim=self.decoder_embed_dim, decoder_depth=self.decoder_depth,
                           decoder_num_heads=self.decoder_num_heads)
        return dict(img_size=img_size, in_chans=1, norm_pix_loss=bool(self.norm_pix_loss),
                    norm_pix_eps=float(self.norm_pix_eps), **sizes)

    def _resolve_img_size(self, patch_shape: tuple[int, int], patch_size: int) -> int:
        side = min(patch_shape)
        if self.img_size is None:
            size = (side // patch_size) * patch_size
            if size < patch_size:
                raise ValueError(f"patches of shape {patch_shape} are smaller than the ViT patch size "
                                 f"{patch_size}; use larger patches or a smaller patch_size")
            return size
        size = self.img_size
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            raise ValueError(f"img_size must be a positive integer or None, got {size!r}")
        if size % patch_size:
            raise ValueError(f"img_size={size} is not a multiple of the ViT patch size {patch_size}; "
                             f"use e.g. img_size={max(size // patch_size, 1) * patch_size}")
        if size > side:
            raise ValueError(f"img_size={size} is larger than the patches {patch_shape}; use img_size <= {side}")
        return int(size)

    def _runtime(self) -> tuple[torch.device, str]:
        device = resolve_device(self.device)
        return device, resolve_precision(self.precision, device)

    # ------------------------------------------------------------------ fit
    def fit(self, patches: Patches | np.ndarray, y: None = None) -> "MAEPretrainer":
        """Pretrain on ``patches`` (:class:`~biodatacentric.Patches` or an ``(n, h, w)`` array).

        Returns
        -------
        self
        """
        self._validate_params()
        patches = as_patches(patches, name="patches")
        device, precision = self._runtime()
        seed = check_random_state_int(self.random_state)
        probe = get_preset(self.preset, patch_size=self.patch_size)
        img_size = self._resolve_img_size(patches.patch_shape, int(probe["patch_size"]))
        arch = self._architecture(img_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = MaskedAutoencoder(**arch)
        init_report = None
        if self.init_checkpoint is not None:
            init_report = load_mae_checkpoint(module, self.init_checkpoint)
        module.to(device)

        eff_batch = int(self.batch_size) * int(self.accum_steps)
        lr = float(self.lr) if self.lr is not None else float(self.blr) * eff_batch / 256.0
        rule = "given" if self.lr is not None else f"blr {self.blr:g} x effective batch {eff_batch} / 256"
        logger.info("MAEPretrainer: peak lr %.3g (%s)", lr, rule)

        n = len(patches)
        ph, pw = patches.patch_shape
        data = patches.images() if n * ph * pw * 4 <= _PRELOAD_BYTES else None
        mask_ratio = float(self.mask_ratio)
        augment = bool(self.augment)

        def step_fn(mod: MaskedAutoencoder, idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
            batch = data[idx] if data is not None else patches.images(idx)
            x = _random_crop(torch.from_numpy(np.ascontiguousarray(batch)), img_size, gen, augment)
            if augment:
                x, _ = batch_flip_rot90(x, None, generator=gen)
                x = batch_intensity_jitter(x, generator=gen, scale=0.1, shift=0.02)
            x = x.to(device, non_blocking=True)
            return mod.training_loss(x, mask_ratio, generator=gen)

        settings = TrainSettings(max_epochs=int(self.max_epochs), batch_size=int(self.batch_size), lr=lr,
                                 weight_decay=float(self.weight_decay), betas=(0.9, 0.95),
                                 warmup_epochs=float(self.warmup_epochs), min_lr=float(self.min_lr),
                                 schedule="cosine", accum_steps=int(self.accum_steps), device=str(device),
                                 precision=precision, checkpoint_dir=self.checkpoint_dir,
                                 checkpoint_every=int(self.checkpoint_every), seed=seed, progress=self.progress,
                                 max_time=None if self.max_time is None else float(self.max_time),
                                 extra={"mask_ratio": mask_ratio, "augment": augment, "n_items": n,
                                        "init": str(self.init_checkpoint)})
        # the checkpoint records which data it was trained on (see patches_fingerprint)
        data_fp = patches_fingerprint(patches, data) if self.checkpoint_dir else None
        history = train(module, step_fn, n, settings, desc="MAE pretraining",
                        interrupt_after=getattr(self, "_interrupt_after", None), log=logger.info,
                        data_fingerprint=data_fp)
        module.eval()
        self.module_ = module
        self.history_ = {k: [float(v) for v in vals] for k, vals in history.items()}
        self.lr_ = lr
        self.img_size_ = img_size
        self.precision_ = precision
        self.init_report_ = init_report
        self.n_samples_fit_ = n
        self.pca_components_ = None
        self.pca_mean_ = None
        self._fit_pca(self._embed(patches, data))
        return self

    def _fit_pca(self, emb: np.ndarray) -> None:
        """Fit the PCA of ``transform`` on raw pooled embeddings (sets ``pca_*_`` and
        ``n_features_out_``)."""
        self.pca_components_ = None
        self.pca_mean_ = None
        if self.n_components is not None:
            k = int(min(self.n_components, emb.shape[1], emb.shape[0]))
            mean = emb.mean(axis=0, dtype=np.float64)
            _, _, vt = np.linalg.svd(emb.astype(np.float64) - mean, full_matrices=False)
            comps = vt[:k]
            # deterministic signs: the largest-magnitude loading of every component is positive
            signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
            signs[signs == 0] = 1
            self.pca_components_ = (comps * signs[:, None]).astype(np.float32)
            self.pca_mean_ = mean.astype(np.float32)
        self.n_features_out_ = int(self.pca_components_.shape[0] if self.pca_components_ is not None
                                   else emb.shape[1])

    # ------------------------------------------------------------------ inference
    def _centre(self, batch: np.ndarray) -> torch.Tensor:
        s = int(self.img_size_)
        h, w = batch.shape[-2:]
        if h < s or w < s:
            raise ValueError(f"patches of shape {(h, w)} are smaller than the training size {s}x{s}")
        y0, x0 = (h - s) // 2, (w - s) // 2
        x = torch.from_numpy(np.ascontiguousarray(batch[:, y0:y0 + s, x0:x0 + s], dtype=np.float32))
        return x[:, None]

    def _batches(self, patches: Patches, data: np.ndarray | None = None):
        bs = int(self.transform_batch_size)
        if data is not None:
            for start in range(0, len(data), bs):
                yield data[start:start + bs]
        else:
            for images, _, _ in patches.iter_batches(bs, with_masks=False):
                yield images

    @torch.no_grad()
    def _embed(self, patches: Patches, data: np.ndarray | None = None) -> np.ndarray:
        """Pooled encoder output (before PCA/L2), float32 ``(n, D)``, unmasked pass."""
        device, precision = self._runtime()
        enc = self.module_.encoder.to(device).eval()
        out = np.empty((len(patches), enc.embed_dim), dtype=np.float32)
        start = 0
        n_batches = math.ceil(len(patches) / int(self.transform_batch_size))
        for images in progress(self._batches(patches, data), desc="MAE embeddings", total=n_batches,
                               enabled=self.progress):
            x = self._centre(images).to(device)
            with autocast(device, precision):
                v = enc.pooled(x, self.pool)
            out[start:start + len(v)] = v.float().cpu().numpy()
            start += len(v)
        return out

    def transform(self, patches: Patches | np.ndarray, *, client: Any = None) -> np.ndarray:
        """Embed patches: ``(n_patches, n_features_out_)`` float32, L2-normalised rows.

        Unmasked encoder pass on the centre ``img_size_`` crop of every patch, pooled over
        tokens (``pool``), projected with the training PCA (if any), L2-normalised. Streams
        over lazy :class:`~biodatacentric.Patches` in batches of ``transform_batch_size``.

        ``client``: a :class:`dask.distributed.Client` to embed on (``None``: the active
        client, if any; ``False``: this process). The patches are split into runs of whole
        batches, the model is sent to each worker once, and the result is identical to the
        single-process one (see :mod:`biodatacentric.parallel`).
        """
        self._check_is_fitted()
        patches = as_patches(patches, name="patches")

        dask_client = resolve_client(client)
        if dask_client is not None:
            shipped = worker_copy(self, precision=self._runtime()[1])
            return map_patches(functools.partial(shipped.transform, client=False), patches, client=dask_client,
                               align=int(self.transform_batch_size), chunk_size=8 * int(self.transform_batch_size))
        emb = self._embed(patches)
        if self.pca_components_ is not None:
            # per batch in torch: row results then depend neither on how many rows are
            # projected together nor on the thread count (NumPy's BLAS depends on both)
            bs = int(self.transform_batch_size)
            comps = torch.from_numpy(self.pca_components_.T.copy())
            mean = torch.from_numpy(self.pca_mean_)
            emb = np.concatenate([(torch.from_numpy(emb[s:s + bs]) - mean).matmul(comps).numpy()
                                  for s in range(0, len(emb), bs)]) if len(emb) else emb[:, :comps.shape[1]]
        return unit_rows(emb)

    def fit_transform(self, patches: Patches | np.ndarray, y: None = None) -> np.ndarray:
        return self.fit(patches).transform(patches)

    @torch.no_grad()
    def reconstruct(self, patches: Patches | np.ndarray, mask_ratio: float | None = None, random_state: int = 0,
                    return_mask: bool = False) -> tuple[np.ndarray, ...]:
        """Masked inputs and reconstructions, ``(n, img_size_, img_size_)`` float32 each.

        For a person to check by eye that pretraining learned something (see
        :meth:`save_reconstruction_grid`). Hidden patches are zero in the masked input; the
        reconstruction is the decoder's prediction for every patch in image units. With
        ``return_mask`` a third array (1 = hidden pixel) is returned.
        """
        self._check_is_fitted()
        patches = as_patches(patches, name="patches")
        ratio = float(self.mask_ratio if mask_ratio is None else mask_ratio)
        device, precision = self._runtime()
        module = self.module_.to(device).eval()
        gen = torch.Generator().manual_seed(int(random_state))
        outs: list[list[np.ndarray]] = [[], [], []]
        for images in self._batches(patches):
            x = self._centre(images).to(device)
            with autocast(device, precision):
                parts = module.reconstruct(x, ratio, generator=gen)
            for lst, t in zip(outs, parts):
                lst.append(t[:, 0].float().cpu().numpy())
        masked, recon, mask = (np.concatenate(o).astype(np.float32) for o in outs)
        return (masked, recon, mask) if return_mask else (masked, recon)

    def save_reconstruction_grid(self, path: str | Path, patches: Patches | np.ndarray, n: int = 8, mask_ratio: float | None = None,
                                 random_state: int = 0) -> Path:
        """Write a PNG with, for ``n`` patches, rows: original, masked input, reconstruction,
        reconstruction with the visible patches pasted back."""
        self._check_is_fitted()
        patches = as_patches(patches, name="patches")
        n = min(int(n), len(patches))
        idx = np.linspace(0, len(patches) - 1, n).round().astype(int)
        sub = patches[idx]
        masked, recon, mask = self.reconstruct(sub, mask_ratio=mask_ratio, random_state=random_state,
                                               return_mask=True)
        original = self._centre(sub.images())[:, 0].numpy()
        titles = patch_labels(sub, np.arange(n))
        return _save_grid(path, original, masked, recon, mask, titles=titles)

    # ------------------------------------------------------------------ external weights
    @classmethod
    def from_checkpoint(cls, path: str | Path | dict, img_size: int | None = None, **params: Any
                        ) -> "MAEPretrainer":
        """An estimator ready to ``transform`` with weights from an MAE/ViT checkpoint.

        The sizes come from ``params`` (``preset`` and overrides) and must match the
        checkpoint; a mismatch raises ``ValueError`` naming the tensors. No PCA is fitted
        (embeddings have the encoder width). ``load_report_`` tells which tensors were
        loaded.
        """
        est = cls(**params)
        est._validate_params()
        probe = get_preset(est.preset, patch_size=est.patch_size)
        size = int(img_size or est.img_size or 224)
        if size % int(probe["patch_size"]):
            raise ValueError(f"img_size={size} is not a multiple of the patch size {probe['patch_size']}")
        module = MaskedAutoencoder(**est._architecture(size))
        est.init_report_ = load_mae_checkpoint(module, path)
        module.eval()
        est.module_ = module
        est.history_ = {"loss": [], "lr": [], "epoch_time": []}
        est.lr_ = None
        est.img_size_ = size
        est.precision_ = est._runtime()[1]
        est.pca_components_ = None
        est.pca_mean_ = None
        est.n_features_out_ = int(module.encoder.embed_dim)
        est.n_samples_fit_ = 0
        return est


    def _load_extra(self, folder: Path, config: dict) -> None:
        for key in ("pca_components_", "pca_mean_"):
            if not hasattr(self, key):
                setattr(self, key, None)


def _random_crop(x: torch.Tensor, size: int, gen: torch.Generator, random: bool) -> torch.Tensor:
    """``(n, h, w)`` -> ``(n, 1, size, size)``; random offsets per sample (centre if not random)."""
    n, h, w = x.shape
    if h == size and w == size:
        return x[:, None]
    if random:
        ys = torch.randint(0, h - size + 1, (n,), generator=gen).tolist()
        xs = torch.randint(0, w - size + 1, (n,), generator=gen).tolist()
    else:
        ys, xs = [(h - size) // 2] * n, [(w - size) // 2] * n
    return torch.stack([x[i, y:y + size, x0:x0 + size] for i, (y, x0) in enumerate(zip(ys, xs))])[:, None]
