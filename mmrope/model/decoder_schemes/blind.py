"""Controls, not published schemes: decoders that cannot tell where a media token came from, so that whatever a
model says about places it must read from the tokens' features, which only the encoder's position encoding can put
there. They close the decoder's channel when the question is the encoder's.

Every decoder scheme that gives each media token its own id lets the decoder itself know each token's place: its
rotary offset to the caption names the patch. And a causal decoder reading media tokens in raster order has a second
channel, their order (causal transformers learn absolute positions with no encoding at all: Haviv et al. 2022).
``blind`` closes both; ``blind_causal`` closes the first only, to measure the second.

Einstein legend: b batch, n tokens, m media tokens.
"""

from __future__ import annotations

from mmrope.model.decoder_schemes.base import PlacedMedia, register_scheme


@register_scheme("blind_causal")
class OneIdPerBlock(PlacedMedia):
    """Every media token of a block on one id, the id its first token would get as text; the text after it continues
    one id later, as if the block were one token. Media tokens still attend causally, in raster order. A 2 x 3
    image::

        tokens  x   vs  img img img img img img  ve  x
        id      0   1   2   2   2   2   2   2    3   4        rope_delta = 4 + 1 - 10 = -5

    One id on all three rows; 1D allocation. Ids are float32 and rope deltas float64, as for every scheme that
    places its media itself (:class:`~mmrope.model.decoder_schemes.base.PlacedMedia`)."""

    design = "every media token of a block on one id; text continues one id after it; causal order among them"
    allocation = "1D: every pair on the one index"
    source = "a control: the decoder's rotary offsets say nothing of a media token's place (its order still does)"
    warn_if_still = False  # still on every axis on purpose
    one_index = True

    def place(self, media, clip, second_per_grid_t):
        relative = media.offset.new_zeros(3, len(media.offset), dtype=media.grid.dtype).double()  # (3, m): all at s
        advance = media.grid.new_ones(len(media.grid)).double()  # the block takes one id
        return relative, advance


@register_scheme("blind")
class Blind(OneIdPerBlock):
    """``blind_causal``'s ids, and the media tokens of a block attend to each other in both directions (a prefix-LM's
    prefix, :attr:`~mmrope.model.decoder_schemes.base.DecoderScheme.bidirectional_media`). The decoder then reads a
    block as a set: permuting its tokens permutes nothing it computes for the text (tested), so neither rotary
    offsets nor order tell it where a token came from. The control for the encoder comparison: with an encoder that
    has no positions (``none``) the model can only guess places."""

    design = "every media token of a block on one id, attending to each other both ways: the block is a set"
    source = "a control: the decoder cannot tell where a media token came from (Circle-RoPE's 'unordered' baseline)"
    bidirectional_media = True
