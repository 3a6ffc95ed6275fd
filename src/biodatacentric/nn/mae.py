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

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import register_module
from .vit import Block, ViTEncoder, init_vit_weights, resize_pos_embed, sincos_pos_embed_2d

__all__ = ["MaskedAutoencoder", "patchify", "unpatchify", "random_masking", "map_reference_state",
           "DECODER_KEYS"]

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
    """Inverse of :func:`patchify`: ``(N, L, p*p*C) -> (N, C, gh*p, gw*p)``."""
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

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float,
                        generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed only the visible patches and run the encoder on them.

        Returns the normalised latent ``(N, n_prefix + keep, D)``, the mask ``(N, L)`` and
        ``ids_restore``. Only visible patches go through the patch embedding: the
        convolution with kernel = stride = p is applied as a linear map on the gathered
        pixel patches (identical result, a quarter of the work at 75 % masking).
        """
        enc = self.encoder
        grid = self._grid_of(imgs)
        n, length = imgs.shape[0], grid[0] * grid[1]
        ids_keep, mask, ids_restore = random_masking(n, length, mask_ratio, generator, imgs.device)
        # (N, L, C*p*p) in the conv kernel's (channel, row, col) order
        p, c = self.patch_size, self.in_chans
        x = imgs.reshape(n, c, grid[0], p, grid[1], p).permute(0, 2, 4, 1, 3, 5).reshape(n, length, c * p * p)
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        w = enc.patch_embed.proj.weight
        # the residual stream stays float32 under autocast (matmuls still run in bf16)
        x = F.linear(x, w.reshape(w.shape[0], -1), enc.patch_embed.proj.bias).float()
        pos = enc.pos_embed_for(grid).float()
        x = x + torch.gather(pos[:, enc.n_prefix:].expand(n, -1, -1), 1,
                             ids_keep[..., None].expand(-1, -1, pos.shape[-1]))
        if enc.cls_token is not None:
            cls = (enc.cls_token + pos[:, :1]).expand(n, -1, -1).to(x.dtype)
            x = torch.cat([cls, x], dim=1)
        latent, _ = enc.run_blocks(x)
        return latent, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor,
                        grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Predict the pixels of every patch ``(N, L, p*p*C)`` from the visible latent."""
        grid = grid or self.grid
        x = self.decoder_embed(latent)
        n, length = ids_restore.shape
        k = self.n_prefix
        vis = x[:, k:]
        mask_tokens = self.mask_token.to(vis.dtype).expand(n, length - vis.shape[1], -1)
        x_ = torch.cat([vis, mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :k], x_], dim=1)
        pos = resize_pos_embed(self.decoder_pos_embed, self.grid, grid, k)
        x = x.float() + pos.float()
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, k:]

    def target_stats(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patchified float32 target, per-patch mean and (unbiased) variance."""
        target = self.patchify(imgs.float())
        if target.shape[-1] == 1:
            return target, target, torch.zeros_like(target)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        return target, mean, var

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over masked patches only, normalised by their number (M6).

        With ``norm_pix_loss`` the target is standardised per patch with
        ``sqrt(var + norm_pix_eps)`` and patches with ``std < min_patch_std`` are excluded.
        """
        weight = mask.float()
        if self.norm_pix_loss:
            target, mean, var = self.target_stats(imgs)
            target = (target - mean) / torch.sqrt(var + self.norm_pix_eps)
            if self.min_patch_std > 0:
                weight = weight * (var.squeeze(-1).sqrt() >= self.min_patch_std).float()
        else:
            target = self.patchify(imgs.float())
        err = (pred.float() - target).pow(2).mean(dim=-1)
        return (err * weight).sum() / weight.sum().clamp_min(1.0)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked pass: returns ``(loss, pred (N, L, p*p*C), mask (N, L))``."""
        grid = self._grid_of(imgs)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore, grid)
        return self.forward_loss(imgs, pred, mask), pred, mask

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


def map_reference_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a reference-layout MAE/ViT state dict to :class:`MaskedAutoencoder` names.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` containers, strips ``module.``
    (DistributedDataParallel) prefixes and prefixes encoder keys with ``encoder.``. Keys
    already in this library's layout pass unchanged.
    """
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    out: dict[str, Any] = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith("encoder.") or k.split(".")[0] in DECODER_KEYS:
            out[k] = v
        else:
            out["encoder." + k] = v
    return out

