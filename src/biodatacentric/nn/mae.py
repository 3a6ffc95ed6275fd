"""Masked autoencoder (He et al., CVPR 2022) built around the shared :class:`ViTEncoder`.

The encoder sees only the visible tokens; a light decoder receives them plus mask tokens,
restores the original token order and regresses the pixels of every patch. The loss is the
mean squared error over the *masked* patches only, normalised by the number of masked
patches (pitfall M6).

State-dict layout: the encoder lives under ``encoder.`` (with the reference names
``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.*``, ``norm``); the decoder
keeps the reference names at the top level (``mask_token``, ``decoder_embed``,
``decoder_pos_embed``, ``decoder_blocks.N.*``, ``decoder_norm``, ``decoder_pred``), so a
checkpoint of ``facebookresearch/mae`` maps onto it by prefixing the encoder keys
(see :func:`map_reference_state`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_module
from .vit import Block, ViTEncoder, init_vit_weights, resize_pos_embed, sincos_pos_embed_2d

__all__ = ["MaskedAutoencoder", "patchify", "unpatchify", "random_masking", "DECODER_KEYS"]

# top-level names of the reference MAE decoder (everything else belongs to the encoder)
DECODER_KEYS = ("mask_token", "decoder_embed", "decoder_pos_embed", "decoder_blocks", "decoder_norm",
                "decoder_pred")


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """``(N, C, H, W) -> (N, L, p*p*C)``; grid row-major, inside a patch ``(row, col, channel)``.

    Works for any number of channels ``C`` (pitfall M8).

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(2 * 3 * 8 * 8.).reshape(2, 3, 8, 8)
    >>> patchify(x, 4).shape
    torch.Size([2, 4, 48])
    >>> torch.equal(unpatchify(patchify(x, 4), 4, 3, (2, 2)), x)
    True
    """
    n, c, h, w = imgs.shape
    if h % p or w % p:
        raise ValueError(f"image size {(h, w)} is not divisible by the patch size {p}")
    gh, gw = h // p, w // p
    x = imgs.reshape(n, c, gh, p, gw, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, gh * gw, p * p * c)


def unpatchify(x: torch.Tensor, p: int, in_chans: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(N, L, p*p*C) -> (N, C, gh*p, gw*p)``.

    Examples
    --------
    >>> import torch
    >>> tokens = torch.zeros(2, 12, 64)   # 2 images, a 3x4 grid of 8x8 one-channel patches
    >>> unpatchify(tokens, 8, 1, (3, 4)).shape
    torch.Size([2, 1, 24, 32])
    """
    n, length, d = x.shape
    gh, gw = grid
    if length != gh * gw or d != p * p * in_chans:
        raise ValueError(f"cannot unpatchify {tuple(x.shape)} with patch {p}, {in_chans} channels, grid {grid}")
    x = x.reshape(n, gh, gw, p, p, in_chans)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, in_chans, gh * p, gw * p)


def random_masking(n: int, length: int, mask_ratio: float, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by shuffling (MAE §1.2).

    Returns ``ids_keep (n, keep)``, ``mask (n, length)`` (1 = removed, in the original token
    order) and ``ids_restore (n, length)``, with ``keep = floor(length * (1 - mask_ratio))``
    (at least 1). The noise is drawn on the CPU from ``generator`` so runs are reproducible
    and resumable on every device.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> ids_keep, mask, ids_restore = random_masking(2, 16, 0.75, generator=g)
    >>> ids_keep.shape, mask.shape, mask.sum(dim=1).tolist()
    (torch.Size([2, 4]), torch.Size([2, 16]), [12.0, 12.0])
    >>> bool((mask.gather(1, ids_keep) == 0).all())   # the kept tokens are the unmasked ones
    True
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1)")
    keep = max(int(length * (1.0 - mask_ratio)), 1)
    noise = torch.rand(n, length, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(n, length)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :keep].to(device), mask.to(device), ids_restore.to(device)


@register_module
class MaskedAutoencoder(nn.Module):
    """ViT masked autoencoder: encoder on visible tokens, light decoder, pixel regression head.

    Parameters
    ----------
    img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio
        Encoder sizes (see :class:`~biodatacentric.nn.vit.ViTEncoder`).
    decoder_embed_dim, decoder_depth, decoder_num_heads
        Decoder sizes (reference: 512 wide, 8 blocks, 16 heads).
    norm_pix_loss : bool
        Regress per-patch standardised pixels instead of raw pixels.
    norm_pix_eps : float
        Added to the per-patch variance before dividing (reference 1e-6; the default 1e-2 is
        safer on mostly-dark microscopy normalised to [0, 1], pitfall M3).
    min_patch_std : float
        With ``norm_pix_loss``, masked patches whose target standard deviation is below this
        are left out of the loss (their standardised target would be amplified noise).
    cls_token : bool
        Use a class token (MAE convention).

    Examples
    --------
    >>> import torch
    >>> m = MaskedAutoencoder(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
    ...                       decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    >>> loss, pred, mask = m(torch.rand(2, 1, 32, 32), mask_ratio=0.75)
    >>> pred.shape, int(mask.sum())
    (torch.Size([2, 16, 64]), 24)

    Training runs :meth:`training_loss`: the same loss, with the prediction head (and the
    last decoder block's per-token layers) evaluated on the masked patches only.

    >>> m.training_loss(torch.rand(2, 1, 32, 32), mask_ratio=0.75).ndim
    0
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 1, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, norm_pix_loss: bool = False,
                 norm_pix_eps: float = 1e-2, min_patch_std: float = 1e-3, cls_token: bool = True) -> None:
        super().__init__()
        if decoder_embed_dim % 4:
            raise ValueError(f"decoder_embed_dim={decoder_embed_dim} must be divisible by 4 (sin-cos positions)")
        self.config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                           depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                           decoder_num_heads=decoder_num_heads, norm_pix_loss=norm_pix_loss,
                           norm_pix_eps=norm_pix_eps, min_patch_std=min_patch_std, cls_token=cls_token)
        self.encoder = ViTEncoder(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                  embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                  cls_token=cls_token)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid = self.encoder.grid
        self.n_prefix = self.encoder.n_prefix
        self.norm_pix_loss = norm_pix_loss
        self.norm_pix_eps = norm_pix_eps
        self.min_patch_std = min_patch_std
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed",
                             sincos_pos_embed_2d(decoder_embed_dim, *self.grid, cls_token=cls_token)[None])
        self.decoder_blocks = nn.ModuleList(Block(decoder_embed_dim, decoder_num_heads, mlp_ratio)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            m.apply(init_vit_weights)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.cls_token", "encoder.pos_embed", "mask_token", "decoder_pos_embed", "cls_token"}

    # ------------------------------------------------------------------ pieces
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        return unpatchify(x, self.patch_size, self.in_chans, grid or self.grid)

    def _grid_of(self, imgs: torch.Tensor) -> tuple[int, int]:
        p = self.patch_size
        if imgs.ndim != 4 or imgs.shape[1] != self.in_chans:
            raise ValueError(f"expected images of shape (N, {self.in_chans}, H, W), got {tuple(imgs.shape)}")
        if imgs.shape[-2] % p or imgs.shape[-1] % p:
            raise ValueError(f"image size {tuple(imgs.shape[-2:])} is not divisible by the patch size {p}")
        return imgs.shape[-2] // p, imgs.shape[-1] // p

    def _patch_table(self, imgs: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """All pixel patches as rows ``(N*L, C*p*p)``, inside a patch in the patch-embedding
        kernel's ``(channel, row, col)`` order."""
        n, c = imgs.shape[:2]
        p = self.patch_size
        x = imgs.reshape(n, c, grid[0], p, grid[1], p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n * grid[0] * grid[1], c * p * p)

    def _pixel_patches(self, table: torch.Tensor, ids: torch.Tensor, conv_order: bool) -> torch.Tensor:
        """Rows of :meth:`_patch_table` at the token ids ``(N, M)`` as ``(N, M, C*p*p)``;
        with ``conv_order=False`` in the ``(row, col, channel)`` order of :func:`patchify`."""
        n, m = ids.shape
        flat = (ids + torch.arange(n, device=ids.device)[:, None] * (table.shape[0] // n)).reshape(-1)
        x = table.index_select(0, flat)
        if not conv_order and self.in_chans > 1:
            p = self.patch_size
            x = x.view(-1, self.in_chans, p, p).permute(0, 2, 3, 1)
        return x.reshape(n, m, -1)

    def _encode(self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None,
                table: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        enc = self.encoder
        grid = self._grid_of(imgs)
        n, length = imgs.shape[0], grid[0] * grid[1]
        ids_keep, mask, ids_restore = random_masking(n, length, mask_ratio, generator, imgs.device)
        # patch embedding of the visible patches only: the convolution with kernel = stride = p
        # is a linear map on the gathered pixel patches (same result, a quarter of the work
        # at 75 % masking)
        if table is None:
            table = self._patch_table(imgs, grid)
        x = self._pixel_patches(table, ids_keep, conv_order=True)
        w = enc.patch_embed.proj.weight
        x = F.linear(x, w.reshape(w.shape[0], -1), enc.patch_embed.proj.bias)
        pos = enc.pos_embed_for(grid).float()
        # the residual stream stays float32 under autocast (matmuls still run in bf16): the
        # bf16 + float32 sum is computed and stored in float32
        x = torch.add(x, torch.gather(pos[:, enc.n_prefix:].expand(n, -1, -1), 1,
                                      ids_keep[..., None].expand(-1, -1, pos.shape[-1])))
        if enc.cls_token is not None:
            cls = (enc.cls_token + pos[:, :1]).expand(n, -1, -1).to(x.dtype)
            x = torch.cat([cls, x], dim=1)
        latent, _ = enc.run_blocks(x)
        return latent, mask, ids_restore, ids_keep

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float,
                        generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed only the visible patches and run the encoder on them.

        Returns the normalised latent ``(N, n_prefix + keep, D)``, the mask ``(N, L)`` and
        ``ids_restore``.
        """
        latent, mask, ids_restore, _ = self._encode(imgs, mask_ratio, generator)
        return latent, mask, ids_restore

    def _decode(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int],
                ids_out: torch.Tensor | None = None) -> torch.Tensor:
        x = self.decoder_embed(latent)
        n, length = ids_restore.shape
        k = self.n_prefix
        # [prefix, visible, mask tokens] -> [prefix, all tokens in the original order], one gather
        mask_tokens = self.mask_token.to(x.dtype).expand(n, length + k - x.shape[1], -1)
        x = torch.cat([x, mask_tokens], dim=1)
        order = ids_restore + k
        if k:
            order = torch.cat([torch.arange(k, device=order.device).expand(n, -1), order], dim=1)
        x = torch.gather(x, 1, order[..., None].expand(-1, -1, x.shape[-1]))
        pos = resize_pos_embed(self.decoder_pos_embed, self.grid, grid, k)
        x = torch.add(x, pos.float())  # float32 residual stream (see _encode)
        blocks = list(self.decoder_blocks)
        if ids_out is None or not blocks:
            for blk in blocks:
                x = blk(x)
            x = x[:, k:]
            if ids_out is not None:
                x = torch.gather(x, 1, ids_out[..., None].expand(-1, -1, x.shape[-1]))
        else:
            # only the outputs at ids_out are needed: everything after the last attention is
            # per token, so the last block computes just those rows
            for blk in blocks[:-1]:
                x = blk(x)
            x = blocks[-1].forward_rows(x, ids_out + k)
        return self.decoder_pred(self.decoder_norm(x))

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor,
                        grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Predict the pixels of every patch ``(N, L, p*p*C)`` from the visible latent."""
        return self._decode(latent, ids_restore, grid or self.grid)

    def target_stats(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patchified float32 target, per-patch mean and (unbiased) variance."""
        return self._target_stats(self.patchify(imgs.float()))

    @staticmethod
    def _target_stats(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if target.shape[-1] == 1:
            return target, target, torch.zeros_like(target)
        return target, target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)

    def _masked_loss(self, target: torch.Tensor, pred: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """Per-patch mean squared error, averaged over the patches with ``weight`` 1 (all if None)."""
        if self.norm_pix_loss:
            target, mean, var = self._target_stats(target)
            target = (target - mean) / torch.sqrt(var + self.norm_pix_eps)
            if self.min_patch_std > 0:
                keep = (var.squeeze(-1).sqrt() >= self.min_patch_std).float()
                weight = keep if weight is None else weight * keep
        if weight is None:  # one fused kernel: the mean over patches of per-patch means
            return F.mse_loss(pred.float(), target)
        err = (pred.float() - target).pow(2).mean(dim=-1)
        return (err * weight).sum() / weight.sum().clamp_min(1.0)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over masked patches only, normalised by their number (M6).

        With ``norm_pix_loss`` the target is standardised per patch with
        ``sqrt(var + norm_pix_eps)`` and patches with ``std < min_patch_std`` are excluded.
        """
        return self._masked_loss(self.patchify(imgs.float()), pred, mask.float())

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked pass: returns ``(loss, pred (N, L, p*p*C), mask (N, L))``."""
        grid = self._grid_of(imgs)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore, grid)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def training_loss(self, imgs: torch.Tensor, mask_ratio: float = 0.75,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The loss of :meth:`forward` (same masking for the same ``generator`` state), with
        the prediction head and the loss evaluated on the masked patches only.

        Used for training: it skips the pixel predictions of visible patches, which the loss
        ignores, and reads the target pixels of the masked patches only.
        """
        grid = self._grid_of(imgs)
        table = self._patch_table(imgs, grid)
        latent, mask, ids_restore, ids_keep = self._encode(imgs, mask_ratio, generator, table)
        if ids_keep.shape[1] == ids_restore.shape[1]:  # nothing masked (mask_ratio 0)
            return self.forward_loss(imgs, self._decode(latent, ids_restore, grid), mask)
        ids_masked = torch.argsort(ids_restore, dim=1)[:, ids_keep.shape[1]:]
        pred = self._decode(latent, ids_restore, grid, ids_out=ids_masked)
        target = self._pixel_patches(table, ids_masked, conv_order=False).float()
        return self._masked_loss(target, pred, None)

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, mask_ratio: float = 0.75,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(masked input, reconstruction, pixel mask)`` as ``(N, C, H, W)`` float32 tensors.

        The reconstruction is in image units (with ``norm_pix_loss`` it is de-standardised
        with each patch's own mean and variance, as in the MAE demo). The pixel mask is 1
        where a patch was hidden from the encoder.
        """
        grid = self._grid_of(imgs)
        _, pred, mask = self.forward(imgs, mask_ratio, generator)
        pred = pred.float()
        if self.norm_pix_loss:
            _, mean, var = self.target_stats(imgs)
            pred = pred * torch.sqrt(var + self.norm_pix_eps) + mean
        pix_mask = self.unpatchify(mask[..., None].float().expand(-1, -1, pred.shape[-1]), grid)
        recon = self.unpatchify(pred, grid)
        return imgs.float() * (1 - pix_mask), recon, pix_mask
