"""A plain ViT encoder shared by the MAE and the TransUNet, so weights transfer by construction.

State-dict names follow the reference MAE layout (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.N.norm1``, ``blocks.N.attn.qkv``, ``blocks.N.attn.proj``,
``blocks.N.norm2``, ``blocks.N.mlp.fc1``, ``blocks.N.mlp.fc2``, ``norm``), so checkpoints of
``facebookresearch/mae`` encoders load directly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_module

__all__ = ["ViTEncoder", "Block", "Attention", "Mlp", "PatchEmbed", "sincos_pos_embed_2d",
           "resize_pos_embed"]


def sincos_pos_embed_2d(embed_dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sine-cosine positional table of shape ``(grid_h*grid_w [+1], embed_dim)``.

    The first half of the channels encodes the column (x) coordinate, the second half the row
    (y), each as ``[sin(pos*w_k), cos(pos*w_k)]`` with ``w_k = 1/10000^(k/(D/4))`` -- the MAE
    reference convention. With ``cls_token`` a zero row is prepended.

    Examples
    --------
    >>> pos = sincos_pos_embed_2d(16, 4, 4, cls_token=True)
    >>> pos.shape, float(pos[0].abs().sum())   # 4x4 grid plus a zero class-token row
    (torch.Size([17, 16]), 0.0)
    >>> round(float(pos.abs().max()), 3)
    1.0
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim={embed_dim} must be divisible by 4 for a 2-D sin-cos table")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    ys, xs = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")

    def enc(pos: np.ndarray) -> np.ndarray:
        out = np.outer(pos.ravel(), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([enc(xs), enc(ys)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, embed_dim)), table], axis=0)
    return torch.from_numpy(table).float()


def resize_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                     n_prefix: int = 1) -> torch.Tensor:
    """Bicubically resize the grid part of a ``(1, n_prefix + H*W, D)`` positional table.

    Examples
    --------
    >>> pos = sincos_pos_embed_2d(16, 4, 4, cls_token=True)[None]
    >>> resize_pos_embed(pos, (4, 4), (6, 6), n_prefix=1).shape   # 1 + 6*6 rows
    torch.Size([1, 37, 16])
    >>> resize_pos_embed(pos, (4, 4), (4, 4)) is pos   # same grid: returned as is
    True
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    prefix, grid = pos[:, :n_prefix], pos[:, n_prefix:]
    d = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(pos.dtype)
    return torch.cat([prefix, grid], dim=1)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution: ``(B, C, H, W) -> (B, H/p * W/p, D)``.

    Examples
    --------
    >>> import torch
    >>> embed = PatchEmbed(patch_size=8, in_chans=1, embed_dim=16)
    >>> embed(torch.zeros(1, 1, 32, 48)).shape   # a 4x6 grid of tokens
    torch.Size([1, 24, 16])
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the ViT patch size {p}")
        return self.proj(x).flatten(2).transpose(1, 2)


# the CPU flash-attention kernels (torch >= 2.3), called directly by _CpuFp32Attention
_HAS_CPU_FLASH = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")
# bytes of float32 attention scores _CpuBf16Attention holds per thread at a time (about one L2
# cache); sequences whose scores for one image exceed 4x this use float32 flash attention
_CHUNK_BYTES = 2 << 20


class _CpuBf16Attention(torch.autograd.Function):
    """Softmax attention for bf16 CPU tensors, in chunks of whole images that fit in cache.

    ``(B, N, 3*C)`` fused q/k/v -> ``(B, N, C)``; or, with separate queries ``q_rows``
    ``(B, M, C)``, keys/values ``(B, N, 2*C)`` -> ``(B, M, C)``. The products run as bf16
    batched matrix products (float32 accumulation); the softmax and its gradient are
    computed in float32 and stored in bf16 -- the precision of attention under bf16 autocast
    anywhere. Working on a chunk of images at a time keeps the scores in cache. On CPUs
    with AVX512-BF16 but no AMX this is about twice as fast as the float32 flash-attention
    kernel, which is in turn several times faster than its bf16 variant there.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, q_rows: torch.Tensor | None, num_heads: int,  # type: ignore[override]
                chunk: int) -> torch.Tensor:
        b, n, cx = qkv.shape
        h = num_heads
        parts = 3 if q_rows is None else 2
        c = cx // parts
        d = c // h
        heads = qkv.reshape(b, n, parts, h, d).permute(2, 0, 3, 1, 4).reshape(parts, b * h, n, d)
        if q_rows is None:
            q, k, v = heads.unbind(0)
        else:
            k, v = heads.unbind(0)
            q = q_rows.reshape(b, -1, h, d).transpose(1, 2).reshape(b * h, -1, d)
        m = q.shape[1]
        out = torch.empty(b, m, h, d, dtype=qkv.dtype)
        zero = qkv.new_zeros(())
        probs = []
        keep = any(ctx.needs_input_grad[:2])  # the probabilities are kept for the backward pass only
        with torch.autocast("cpu", enabled=False):
            for s in range(0, b, chunk):
                e = min(s + chunk, b)
                sl = slice(s * h, e * h)
                scores = torch.baddbmm(zero, q[sl], k[sl].transpose(1, 2), beta=0.0, alpha=d ** -0.5)
                p = torch.softmax(scores, dim=-1)
                if keep:
                    probs.append(p)
                out[s:e].copy_(torch.bmm(p, v[sl]).view(e - s, h, m, d).transpose(1, 2))
        ctx.save_for_backward(q, heads, *probs)
        ctx.chunk = chunk
        ctx.num_heads = h
        ctx.separate_q = q_rows is not None
        return out.view(b, m, c)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        q, heads, *probs = ctx.saved_tensors
        parts = heads.shape[0]
        k, v = heads[parts - 2], heads[parts - 1]
        b, m = grad.shape[:2]
        n, d = k.shape[1:]
        h = ctx.num_heads
        scale = d ** -0.5
        dtype = heads.dtype
        go = grad.to(dtype).reshape(b, m, h, d)
        dheads = torch.empty(b, n, parts, h, d, dtype=dtype)
        dq_all = torch.empty(b, m, h, d, dtype=dtype) if ctx.separate_q else dheads[:, :, 0]
        zero = heads.new_zeros(())
        for p, s in zip(probs, range(0, b, ctx.chunk)):
            e = min(s + ctx.chunk, b)
            sl = slice(s * h, e * h)
            do = go[s:e].transpose(1, 2).reshape(-1, m, d)
            dv = torch.bmm(p.transpose(1, 2), do)
            ds = torch._softmax_backward_data(torch.bmm(do, v[sl].transpose(1, 2)), p, -1, dtype)
            dq = torch.baddbmm(zero, ds, k[sl], beta=0.0, alpha=scale)
            dk = torch.baddbmm(zero, ds.transpose(1, 2), q[sl], beta=0.0, alpha=scale)
            dq_all[s:e].copy_(dq.view(e - s, h, m, d).transpose(1, 2))
            dheads[s:e, :, parts - 2].copy_(dk.view(e - s, h, n, d).transpose(1, 2))
            dheads[s:e, :, parts - 1].copy_(dv.view(e - s, h, n, d).transpose(1, 2))
        dq_out = dq_all.reshape(b, m, h * d) if ctx.separate_q else None
        return dheads.view(b, n, parts * h * d), dq_out, None, None


class _CpuFp32Attention(torch.autograd.Function):
    """Attention on a fused ``(B, N, 3*C)`` bf16 q/k/v tensor with the float32 flash kernel.

    For bf16 CPU tensors whose per-image scores are too large for :class:`_CpuBf16Attention`
    (long sequences): torch's fused CPU attention kernel is much faster in float32 than in
    bf16 without AMX tiles. The float32 copy of q/k/v is made once; the backward pass writes
    the q/k/v gradients straight into one tensor of the input's dtype and layout (autograd's
    generic path would stack, re-layout and cast them in three passes).
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:  # type: ignore[override]
        b, n, c3 = qkv.shape
        c = c3 // 3
        q, k, v = qkv.float().reshape(b, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.in_dtype = qkv.dtype
        # the kernel's output is laid out (B, N, heads, head_dim): the transpose is free
        return out.transpose(1, 2).reshape(b, n, c).to(qkv.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        b, h, n, d = q.shape
        g = grad.float().reshape(b, n, h, d).transpose(1, 2)
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(g, q, k, v, out, lse,
                                                                                        0.0, False)
        dqkv = torch.empty(b, n, 3, h, d, dtype=ctx.in_dtype)
        for i, t in enumerate((dq, dk, dv)):
            dqkv[:, :, i].copy_(t.transpose(1, 2))
        return dqkv.view(b, n, 3 * h * d), None


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (reference MAE/timm layout).

    On the CPU under bf16 autocast it runs :class:`_CpuBf16Attention` (or, for long
    sequences, :class:`_CpuFp32Attention`): torch's fused CPU attention kernel is slow in
    bf16 on CPUs without AMX. Elsewhere, and with attention dropout while training, it uses
    :func:`torch.nn.functional.scaled_dot_product_attention`.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> attn = Attention(dim=16, num_heads=2)
    >>> x = torch.randn(2, 5, 16)   # (batch, tokens, dim)
    >>> attn(x).shape
    torch.Size([2, 5, 16])

    :meth:`forward_rows` computes the outputs of some query tokens only:

    >>> rows = torch.tensor([[0, 3], [1, 4]])
    >>> full = attn(x).gather(1, rows[..., None].expand(-1, -1, 16))
    >>> torch.allclose(attn.forward_rows(x, rows), full, atol=1e-6)
    True
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _bf16_cpu_chunk(self, x: torch.Tensor, n_keys: int, n_queries: int) -> int | None:
        """Images per chunk for :class:`_CpuBf16Attention`, or None where it does not apply."""
        if x.device.type != "cpu" or x.dtype != torch.bfloat16 or (self.attn_drop.training and self.attn_drop.p):
            return None
        per_image = max(self.num_heads * n_keys * n_queries * 4, 1)
        if per_image > 4 * _CHUNK_BYTES and _HAS_CPU_FLASH:
            return None
        chunk = max(1, _CHUNK_BYTES * torch.get_num_threads() // per_image)
        n_chunks = max(1, -(-x.shape[0] // chunk))
        return max(1, -(-x.shape[0] // n_chunks))  # equal chunks: 32 images in 16 + 16, not 26 + 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x)
        # attention dropout is a module so that MC-dropout switches it with the others
        p = self.attn_drop.p if self.attn_drop.training else 0.0
        chunk = self._bf16_cpu_chunk(qkv, n, n)
        if chunk is not None:
            x = _CpuBf16Attention.apply(qkv, None, self.num_heads, chunk)
        elif p == 0.0 and qkv.device.type == "cpu" and qkv.dtype == torch.bfloat16:
            x = _CpuFp32Attention.apply(qkv, self.num_heads)
        else:
            q, k, v = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))

    def forward_rows(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The output for the query tokens ``rows`` ``(B, M)`` only (keys and values from all
        tokens): equal to ``forward(x)`` gathered at ``rows``, without computing the rest."""
        b, n, c = x.shape
        h = self.num_heads
        w, bias = self.qkv.weight, self.qkv.bias
        kv = F.linear(x, w[c:], None if bias is None else bias[c:])
        xq = torch.gather(x, 1, rows[..., None].expand(-1, -1, c))
        q = F.linear(xq, w[:c], None if bias is None else bias[:c])
        chunk = self._bf16_cpu_chunk(kv, n, rows.shape[1])
        if chunk is not None:
            out = _CpuBf16Attention.apply(kv, q, h, chunk)
        else:
            p = self.attn_drop.p if self.attn_drop.training else 0.0
            k, v = kv.reshape(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
            qh = q.reshape(b, -1, h, c // h).transpose(1, 2)
            if qh.device.type == "cpu" and qh.dtype == torch.bfloat16:  # see _CpuFp32Attention
                with torch.autocast("cpu", enabled=False):
                    out = F.scaled_dot_product_attention(qh.float(), k.float(), v.float(), dropout_p=p).to(qh.dtype)
            else:
                out = F.scaled_dot_product_attention(qh, k, v, dropout_p=p)
            out = out.transpose(1, 2).reshape(b, -1, c)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    """Transformer MLP: ``fc1``, GELU, dropout, ``fc2``, dropout (``(..., dim) -> (..., dim)``).

    Examples
    --------
    >>> import torch
    >>> mlp = Mlp(dim=16, hidden=64, drop=0.1)
    >>> mlp(torch.zeros(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Examples
    --------
    >>> import torch
    >>> block = Block(dim=16, num_heads=2, mlp_ratio=2.0)
    >>> block(torch.zeros(2, 5, 16)).shape   # (batch, tokens, dim) in and out
    torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=0.0)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward_rows(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` gathered at the tokens ``rows`` ``(B, M)``, computing only those
        outputs (attention still reads every token)."""
        out = torch.gather(x, 1, rows[..., None].expand(-1, -1, x.shape[-1]))
        out = out + self.attn.forward_rows(self.norm1(x), rows)
        return out + self.mlp(self.norm2(out))


def init_vit_weights(module: nn.Module) -> None:
    """MAE initialisation: Xavier-uniform Linear layers, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_module
class ViTEncoder(nn.Module):
    """ViT encoder: patch embedding, fixed 2-D sin-cos positions, pre-norm blocks, final norm.

    Parameters
    ----------
    img_size : int
        Training image size (square); other sizes divisible by ``patch_size`` also work, the
        positional table is then resized bicubically.
    patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias
        Usual ViT sizes.
    drop : float
        Dropout inside every MLP (after both linear layers); sampled by MC dropout.
    attn_drop : float
        Dropout on attention weights.
    cls_token : bool
        Prepend a learnable class token (MAE convention; pooled embeddings use the mean of
        the patch tokens by default).

    Examples
    --------
    >>> import torch
    >>> enc = ViTEncoder(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    >>> enc(torch.zeros(1, 1, 32, 32)).shape   # class token + 4x4 patch tokens
    torch.Size([1, 17, 16])
    >>> enc.pooled(torch.zeros(2, 1, 48, 48)).shape   # other sizes: positions are resized
    torch.Size([2, 16])
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 1, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, cls_token: bool = True) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not divisible by patch_size={patch_size}")
        if embed_dim % 4:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by 4 (2-D sin-cos positions)")
        self.config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                           depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                           drop=drop, attn_drop=attn_drop, cls_token=cls_token)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.n_prefix = 1 if cls_token else 0
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, *self.grid, cls_token=cls_token)[None])
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        self.blocks.apply(init_vit_weights)
        init_vit_weights(self.norm)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The positional table for a token grid, resized if it differs from the training grid."""
        return resize_pos_embed(self.pos_embed, self.grid, grid, self.n_prefix)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch tokens with positions added ``(B, L, D)`` and the class token row ``(B, 1, D)``."""
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        tokens = self.patch_embed(x)
        pos = self.pos_embed_for(grid).to(tokens.dtype)
        tokens = tokens + pos[:, self.n_prefix:]
        cls = None
        if self.cls_token is not None:
            cls = (self.cls_token + pos[:, :1]).expand(tokens.shape[0], -1, -1)
        return tokens, cls

    def run_blocks(self, tokens: torch.Tensor, return_layers: Sequence[int] = ()) -> tuple[torch.Tensor, list]:
        """Run all blocks and the final norm; also return hidden states after ``return_layers``."""
        hidden = []
        want = set(return_layers)
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i in want:
                hidden.append(tokens)
        return self.norm(tokens), hidden

    def forward(self, x: torch.Tensor, return_layers: Sequence[int] = ()) -> torch.Tensor | tuple:
        """Unmasked pass. Returns normalised tokens ``(B, n_prefix + L, D)`` (and hidden states
        after the blocks listed in ``return_layers``, class token included, if any are asked)."""
        tokens, cls = self.embed(x)
        if cls is not None:
            tokens = torch.cat([cls, tokens], dim=1)
        out, hidden = self.run_blocks(tokens, return_layers)
        return (out, hidden) if return_layers else out

    def pooled(self, x: torch.Tensor, pool: str = "mean") -> torch.Tensor:
        """One vector per image: mean of the patch tokens (default) or the class token."""
        out = self.forward(x)
        if pool == "cls":
            if self.cls_token is None:
                raise ValueError("pool='cls' needs an encoder built with cls_token=True")
            return out[:, 0]
        if pool != "mean":
            raise ValueError(f"pool={pool!r} must be 'mean' or 'cls'")
        return out[:, self.n_prefix:].mean(dim=1)


def encoder_state_report(target: nn.Module, state: dict[str, torch.Tensor], prefix: str = "") -> dict:
    """Load ``state`` into ``target`` (non-strict), failing loudly on shape mismatches.

    Returns ``{"loaded": [...], "initialised": [...], "unused": [...]}`` (names in ``target``).
    """
    own = target.state_dict()
    loaded, mismatched = [], []
    new_state = {}
    for k, v in state.items():
        name = prefix + k
        if name not in own:
            continue
        if own[name].shape != v.shape:
            mismatched.append(f"{name}: checkpoint {tuple(v.shape)} vs model {tuple(own[name].shape)}")
            continue
        new_state[name] = v
        loaded.append(name)
    if mismatched:
        raise ValueError("encoder weights do not fit the model (shape mismatch):\n  " + "\n  ".join(mismatched)
                         + "\nUse the same preset / patch_size / embed_dim as the pretrained encoder.")
    target.load_state_dict(new_state, strict=False)
    unused = sorted(prefix + k for k in state if prefix + k not in own)
    initialised = sorted(k for k in own if k not in new_state)
    return {"loaded": sorted(loaded), "initialised": initialised, "unused": unused}
