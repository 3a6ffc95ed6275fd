"""TransUNet on the shared ViT encoder, with UNETR-style transformer skips and a CNN stem.

Layout (patch size ``p = 2**L``, feature width ``f``; level ``s`` has resolution ``1/2**s``
and ``f * 2**s`` channels)::

    x ──► stem: conv block (level 0, full resolution) ──► strided conv block (level 1, 1/2)
    x ──► ViTEncoder (MAE weights load 1:1) ──► tokens after blocks at k/L of the depth
          (k = 1..L-1) and the final normed tokens, reshaped to (D, H/p, W/p) maps
    tap k (k < L-1) ──► (L - s) x [2x2 stride-2 transposed conv + conv block] to level s = k+1
    last tap ⊕ final tokens ──► conv block at level L (bottleneck)
    decoder (cascaded upsampler): for s = L-1 .. 0:
        2x2 stride-2 transposed conv, concat skip s, [Dropout2d], conv block
    head: Dropout2d, 1x1 conv ──► logits (n_classes, H, W)
    [aux head: 1x1 conv on the level-2 decoder output ──► coarse logits (n_classes, H/4, W/4)]

Two options make the coarse (transformer) path pull its weight (issue 20: without them a
trained segmenter's Dice does not change when the ViT features are zeroed, because the
decoder reads everything it needs from the stem's full- and half-resolution skips):

* ``aux_head=True`` adds a 1x1 head on the last decoder feature built from transformer
  features alone (level 2, before the stem skips join); :meth:`TransUNet.forward_aux` returns
  its logits beside the main ones, for a deep-supervision loss; ``aux_head="fuse"`` also adds
  them, upsampled x4 (bilinear), to the output logits, so the output depends on the ViT;
* ``stem_skip_drop=p`` zeroes both stem skips of a sample with probability ``p`` during
  training (never in eval mode, and not switched on by MC-dropout hunting, which turns on
  only ``nn.Dropout`` modules), so the decoder must also segment from the coarse path.

For ``p = 16`` the taps sit after blocks ``depth/4, depth/2, 3*depth/4`` (UNETR), mapped to
1/4, 1/8 and (merged with the final output) 1/16 resolution; the stem provides the full- and
half-resolution skips that a pure ViT lacks (ALGORITHMS.md §3.3, pitfall T1).

The split used by MC-dropout hunting (ALGORITHMS.md §4.6):

* :meth:`TransUNet.encode` -- stem and transformer (every ``nn.Dropout`` of the ViT lives
  here: dropout after both MLP layers, rate ``drop``);
* :meth:`TransUNet.decode` -- transformer-skip projections, cascaded upsampler and head
  (every ``nn.Dropout2d`` lives in ``self.decoder``, rate ``decoder_dropout``, placed by
  ``decoder_dropout_at``), itself split into :meth:`TransUNet.decode_prepare` (deterministic,
  up to the first active dropout) and :meth:`TransUNet.decode_sample` (the stochastic rest).

``forward(x) == decode(encode(x)) == decode_sample(decode_prepare(encode(x)))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_module
from .vit import ViTEncoder

__all__ = ["TransUNet", "ConvBlock", "make_norm", "tap_layers"]


def make_norm(kind: str, channels: int) -> nn.Module:
    """``"group"`` (GroupNorm, up to 8 groups -- robust to batches of 2-4), ``"batch"`` or ``"instance"``.

    Examples
    --------
    >>> norm = make_norm("group", 12)   # gcd(12, 8) = 4 groups
    >>> type(norm).__name__, norm.num_groups
    ('GroupNorm', 4)
    >>> type(make_norm("instance", 12)).__name__
    'InstanceNorm2d'
    """
    if kind == "group":
        groups = math.gcd(channels, 8)
        return nn.GroupNorm(groups, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"norm={kind!r} must be 'group', 'batch' or 'instance'")


class ConvBlock(nn.Sequential):
    """Two ``[3x3 conv (no bias), norm, ReLU]`` layers; the first may stride.

    Examples
    --------
    >>> import torch
    >>> block = ConvBlock(1, 8, norm="group", stride=2)
    >>> block(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 8, 16, 16])
    """

    def __init__(self, c_in: int, c_out: int, norm: str = "group", stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), make_norm(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), make_norm(norm, c_out), nn.ReLU(inplace=True))


class UpProject(nn.Sequential):
    """Token map ``(D, h, w)`` to ``(c, h * 2**n, w * 2**n)`` by ``n`` [transposed conv + conv block]."""

    def __init__(self, dim: int, c_out: int, n_up: int, norm: str) -> None:
        layers: list[nn.Module] = []
        c = dim
        for _ in range(n_up):
            layers += [nn.ConvTranspose2d(c, c_out, 2, stride=2, bias=False), ConvBlock(c_out, c_out, norm)]
            c = c_out
        super().__init__(*layers)


class DecoderBlock(nn.Module):
    """Upsample x2 (transposed conv), concatenate the skip, ``Dropout2d``, conv block."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=False)
        self.dropout = nn.Dropout2d(dropout)
        self.conv = ConvBlock(c_out + c_skip, c_out, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.up(x), skip], dim=1)
        return self.conv(self.dropout(x))


def tap_layers(depth: int, n_taps: int) -> list[int]:
    """0-based block indices after which hidden states are tapped: ``depth*k/(n_taps+1) - 1``.

    Examples
    --------
    >>> tap_layers(12, 3)   # UNETR: after blocks 3, 6 and 9 of 12
    [2, 5, 8]
    """
    return [min(max(depth * k // (n_taps + 1) - 1, 0), depth - 1) for k in range(1, n_taps + 1)]


DROPOUT_PLACES = ("blocks", "last", "head")


class _Decoder(nn.Module):
    """Everything after the transformer: skip projections, cascaded upsampler, head.

    ``dropout_at`` says which ``Dropout2d`` are active (the others have rate 0 and do nothing):
    ``"blocks"`` before every decoder block and the head, ``"last"`` before the
    full-resolution block and the head, ``"head"`` before the head only.
    """

    def __init__(self, dim: int, levels: int, feature_size: int, n_classes: int, norm: str,
                 dropout: float, dropout_at: str = "blocks", aux_head: bool | str = False,
                 stem_skip_drop: float = 0.0) -> None:
        super().__init__()
        self.stem_skip_drop = float(stem_skip_drop)
        ch = [feature_size * 2 ** s for s in range(levels + 1)]
        # transformer taps for levels 2 .. L-1 (coarsest tap merged into the bottleneck)
        self.projections = nn.ModuleList(UpProject(dim, ch[s], levels - s, norm) for s in range(2, levels))
        self.bottleneck = ConvBlock(2 * dim, ch[levels], norm)
        n = levels
        active = {"blocks": range(n), "last": [n - 1], "head": []}[dropout_at]
        self.blocks = nn.ModuleList(DecoderBlock(ch[s + 1], ch[s], ch[s], norm, dropout if i in active else 0.0)
                                    for i, s in enumerate(reversed(range(levels))))
        self.head_dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(ch[0], n_classes, 1)
        # blocks before the one that joins the half-resolution stem skip: their output (level 2)
        # is built from transformer features only
        self.n_coarse = levels - 2
        self.aux = nn.Conv2d(ch[2], n_classes, 1) if aux_head else None
        self.aux_fuse = aux_head == "fuse"

    def _skips(self, features: dict) -> list:
        """Skips for the decoder blocks, coarsest first; stem skips dropped per sample in training."""
        taps = features["taps"]
        stem = list(features["stem"])  # level 0, level 1
        if self.training and self.stem_skip_drop > 0:
            keep = (torch.rand(stem[0].shape[0], 1, 1, 1, device=stem[0].device) >= self.stem_skip_drop)
            stem = [s * keep.to(s.dtype) for s in stem]
        skips = stem + [proj(t) for proj, t in zip(self.projections, taps[:-1])]
        skips.reverse()
        return skips

    def forward_aux(self, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, coarse_logits)``: the main output and the aux head's (level 2) output."""
        if self.aux is None:
            raise RuntimeError("this decoder has no aux head (build the TransUNet with aux_head=True)")
        return self._finish(self.prepare(features))

    def _first_stochastic_block(self) -> int:
        """Index of the first decoder block with an active dropout (``len(blocks)``: the head's only)."""
        for i, block in enumerate(self.blocks):
            if block.dropout.p > 0:
                return i
        return len(self.blocks)

    def _coarse(self, x: torch.Tensor, i: int, coarse: torch.Tensor | None) -> torch.Tensor | None:
        """The aux head's logits when ``x`` is the input of block ``i`` = the level-2 feature."""
        return self.aux(x) if self.aux is not None and i == self.n_coarse and coarse is None else coarse

    def prepare(self, features: dict) -> dict:
        """The deterministic part: everything before the first active dropout."""
        skips = self._skips(features)
        x = self.bottleneck(torch.cat([features["tokens"], features["taps"][-1]], dim=1))
        k = self._first_stochastic_block()
        coarse = None
        for i, (block, skip) in enumerate(zip(self.blocks[:k], skips[:k])):
            coarse = self._coarse(x, i, coarse)
            x = block(x, skip)
        coarse = self._coarse(x, k, coarse)
        if k < len(self.blocks):  # the input of block k's dropout
            x = torch.cat([self.blocks[k].up(x), skips[k]], dim=1)
        return {"x": x, "skips": skips[k + 1:], "start": k, "coarse": coarse}

    def _finish(self, prepared: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, skips, k = prepared["x"], prepared["skips"], int(prepared["start"])
        coarse = prepared.get("coarse")
        if k < len(self.blocks):
            x = self.blocks[k].conv(self.blocks[k].dropout(x))
            for i, (block, skip) in enumerate(zip(self.blocks[k + 1:], skips), start=k + 1):
                coarse = self._coarse(x, i, coarse)
                x = block(x, skip)
        logits = self.head(self.head_dropout(x))
        if self.aux_fuse and coarse is not None:
            logits = logits + F.interpolate(coarse, size=tuple(logits.shape[-2:]), mode="bilinear",
                                            align_corners=False)
        return logits, coarse

    def sample(self, prepared: dict) -> torch.Tensor:
        """The stochastic part: from the first active dropout to the logits."""
        return self._finish(prepared)[0]

    def forward(self, features: dict) -> torch.Tensor:
        return self.sample(self.prepare(features))


@register_module
class TransUNet(nn.Module):
    """TransUNet whose transformer is a :class:`~biodatacentric.nn.vit.ViTEncoder`.

    Parameters
    ----------
    img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, cls_token
        Passed to the ViT encoder; use the values of the MAE encoder whose weights you load.
        Other image sizes divisible by ``patch_size`` work at run time.
    n_classes : int
        Output channels (2 for vessel / background).
    drop : float
        Dropout inside every transformer MLP (trained with it, sampled by MC dropout).
    attn_drop : float
        Attention dropout.
    decoder_dropout : float
        ``Dropout2d`` rate in the decoder.
    decoder_dropout_at : {"head", "last", "blocks"}
        Where the decoder's ``Dropout2d`` sit: before the head only (default; the cheapest for
        decoder-only MC sampling, which then reuses every decoder feature and re-runs only the
        1x1 head), before the full-resolution block and the head, or before every decoder block
        and the head (the placement table is in ``benchmarks/RESULTS.md``).
    feature_size : int
        Width of the full-resolution features; doubles per level.
    norm : {"group", "batch", "instance"}
        Normalisation of the convolutional layers.
    aux_head : {False, True, "fuse"}
        Add a 1x1 head on the level-2 decoder output (transformer features only), read by
        :meth:`forward_aux` for deep supervision; ``"fuse"`` also adds its upsampled logits to
        the output. Default off (the layout before the option: saved models without it load
        unchanged).
    stem_skip_drop : float
        Probability, per training sample, that both stem skips are zeroed (training mode only).

    Examples
    --------
    >>> import torch
    >>> net = TransUNet(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, feature_size=4)
    >>> net(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 2, 32, 32])
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 1, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 cls_token: bool = True, n_classes: int = 2, drop: float = 0.1, attn_drop: float = 0.0,
                 decoder_dropout: float = 0.1, feature_size: int = 16, norm: str = "group",
                 decoder_dropout_at: str = "head", aux_head: bool | str = False,
                 stem_skip_drop: float = 0.0) -> None:
        super().__init__()
        levels = int(round(math.log2(patch_size)))
        if patch_size < 4 or 2 ** levels != patch_size:
            raise ValueError(f"patch_size={patch_size} must be a power of two >= 4 for the TransUNet decoder")
        if n_classes < 2:
            raise ValueError(f"n_classes={n_classes} must be >= 2 (background + at least one class)")
        if not 0.0 <= decoder_dropout < 1.0 or not 0.0 <= drop < 1.0 or not 0.0 <= stem_skip_drop < 1.0:
            raise ValueError("dropout rates must lie in [0, 1)")
        make_norm(norm, 8)  # validates the name
        if aux_head not in (False, True, "fuse"):
            raise ValueError(f"aux_head={aux_head!r} must be False, True or 'fuse'")
        if decoder_dropout_at not in DROPOUT_PLACES:
            raise ValueError(f"decoder_dropout_at={decoder_dropout_at!r} must be one of {DROPOUT_PLACES}")
        self.config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                           depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                           cls_token=cls_token, n_classes=n_classes, drop=drop, attn_drop=attn_drop,
                           decoder_dropout=decoder_dropout, feature_size=feature_size, norm=norm,
                           decoder_dropout_at=decoder_dropout_at)
        if aux_head or stem_skip_drop:   # configs without the keys build the network as before
            self.config.update(aux_head=aux_head, stem_skip_drop=float(stem_skip_drop))
        self.levels = levels
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.n_classes = n_classes
        self.encoder = ViTEncoder(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                  embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                  qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, cls_token=cls_token)
        self.taps = tap_layers(depth, levels - 1)
        self.stem = nn.ModuleList([ConvBlock(in_chans, feature_size, norm),
                                   ConvBlock(feature_size, feature_size * 2, norm, stride=2)])
        self.decoder = _Decoder(embed_dim, levels, feature_size, n_classes, norm, decoder_dropout,
                                decoder_dropout_at, aux_head=aux_head, stem_skip_drop=stem_skip_drop)
        for m in list(self.stem.modules()) + list(self.decoder.modules()):
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.cls_token", "encoder.pos_embed"}

    def layer_id(self, name: str) -> tuple[int, int]:
        """``(layer, n_layers)`` for layer-wise lr decay: embeddings 0, block i -> i+1, rest last."""
        n = len(self.encoder.blocks) + 1
        if name.startswith(("encoder.patch_embed", "encoder.cls_token", "encoder.pos_embed")):
            return 0, n
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1, n
        return n, n

    def encode(self, x: torch.Tensor) -> dict:
        """Deterministic-in-eval part: CNN stem and transformer.

        Returns a dict with ``"stem"`` (full- and half-resolution maps), ``"taps"`` (hidden
        states after the tap blocks, as ``(B, D, H/p, W/p)`` maps) and ``"tokens"`` (final
        normalised tokens as a map).
        """
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        s0 = self.stem[0](x)
        s1 = self.stem[1](s0)
        tokens, cls = self.encoder.embed(x)
        if cls is not None:
            tokens = torch.cat([cls, tokens], dim=1)
        out, hidden = self.encoder.run_blocks(tokens, sorted(set(self.taps)))
        by_layer = dict(zip(sorted(set(self.taps)), hidden))
        k = self.encoder.n_prefix

        def as_map(t: torch.Tensor) -> torch.Tensor:
            return t[:, k:].transpose(1, 2).reshape(t.shape[0], -1, h, w)

        return {"stem": [s0, s1], "taps": [as_map(by_layer[i]) for i in self.taps], "tokens": as_map(out)}

    def decode(self, features: dict) -> torch.Tensor:
        """Logits ``(B, n_classes, H, W)`` from :meth:`encode`'s features (decoder dropout lives here)."""
        return self.decoder(features)

    def decode_prepare(self, features: dict) -> dict:
        """The deterministic start of :meth:`decode`: everything before the first active dropout.

        ``decode(f) == decode_sample(decode_prepare(f))``. MC-dropout hunting in
        ``mode="decoder_only"`` runs this once per patch and :meth:`decode_sample` ``T`` times.
        """
        return self.decoder.prepare(features)

    def decode_sample(self, prepared: dict) -> torch.Tensor:
        """The rest of :meth:`decode`, from the first active decoder dropout to the logits."""
        return self.decoder.sample(prepared)

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, coarse_logits)`` with ``coarse_logits`` of the aux head at 1/4 resolution.

        The same main logits as :meth:`forward` for the same random state; needs ``aux_head``.

        Examples
        --------
        >>> import torch
        >>> net = TransUNet(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, feature_size=4,
        ...                 aux_head="fuse").eval()
        >>> logits, coarse = net.forward_aux(torch.zeros(1, 1, 32, 32))
        >>> tuple(logits.shape), tuple(coarse.shape)
        ((1, 2, 32, 32), (1, 2, 8, 8))
        >>> torch.equal(logits, net(torch.zeros(1, 1, 32, 32)))
        True
        """
        return self.decoder.forward_aux(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
