"""More decoder position schemes, one small class each, registered in
:data:`mmrope.model.decoder_positions.SCHEMES` when imported (``decoder_positions`` imports this package last).

    one_d.py    v2pe (fractional steps through a medium), pixtral (break tokens after each row): 1D RoPE
    circle.py   circle_rope: media ids on a ring orthogonal to the text direction
    spatial_reset.py  mrope_i, mhrope, il_rope, omni_rope: media h, w counted from 0 in each block
    blind.py    blind, blind_causal: controls whose decoder cannot tell where a media token came from
"""

from mmrope.model.schemes import blind, circle, diagonal, one_d, spatial_reset  # noqa: F401
