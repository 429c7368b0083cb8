"""The decoder's position schemes, one small registered class per value of ``model.position_scheme``.

    base.py           SCHEMES (the registry), DecoderScheme, PlacedMedia (media ids placed by the scheme)
    mrope.py          mrope, mrope_interleaved: M-RoPE's grid, chunked or interleaved pairs (Qwen2-VL, Qwen3-VL)
    flat.py           flat, v2pe, pixtral: one id per token on all three rows (1D RoPE)
    circle.py         circle_rope: media ids on a ring orthogonal to the text direction
    videorope.py      videorope, hope, lumos_mmrope: media ids off M-RoPE's grid, other pair allocations
    spatial_reset.py  mrope_i, mhrope, il_rope, omni_rope: media h, w counted from 0 in each block
    blind.py          blind_causal, blind: controls whose decoder cannot tell where a media token came from

This package imports its families, each of which registers its schemes in :data:`SCHEMES`; the base imports none of
them. A scheme in a user's own file subclasses :class:`DecoderScheme` and registers itself with
:func:`register_scheme` in the same way (README "Model", adding an arm).
"""

# the families in the order README "Model" lists their schemes, which the registry keeps
from mmrope.model.decoder_schemes import mrope, flat, circle, videorope, spatial_reset, blind  # noqa: F401  # isort: skip
from mmrope.model.decoder_schemes.base import (
    ALMOST_STILL,
    AXIS_NAMES,
    SCHEMES,
    DecoderScheme,
    PlacedMedia,
    register_scheme,
    still_axes,
)

__all__ = ["ALMOST_STILL", "AXIS_NAMES", "SCHEMES", "DecoderScheme", "PlacedMedia", "register_scheme", "still_axes"]
