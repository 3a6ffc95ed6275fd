"""Named model sizes, so users choose by name rather than by ten numbers."""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "get_preset"]

PRESETS: dict[str, dict[str, Any]] = {
    # tests: seconds on a CPU
    "tiny": dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                 decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2),
    # CPU work (the width/depth of the MONAI comparison in benchmarks/)
    "small": dict(patch_size=16, embed_dim=256, depth=6, num_heads=8, mlp_ratio=4.0,
                  decoder_embed_dim=192, decoder_depth=2, decoder_num_heads=6),
    # ViT-B/16 with the 512-wide, 8-block decoder, as in the paper and in He et al. 2022
    "base": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}

ENCODER_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")


def get_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """The preset ``name`` with ``overrides`` applied (``None`` values are ignored).

    Examples
    --------
    >>> cfg = get_preset("tiny", depth=4, embed_dim=None)   # None keeps the preset's value
    >>> cfg["depth"], cfg["embed_dim"], cfg["patch_size"]
    (4, 32, 8)
    >>> sorted(PRESETS)
    ['base', 'small', 'tiny']
    """
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not one of {sorted(PRESETS)}")
    out = dict(PRESETS[name])
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out
