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

from mmrope.model.decoder_positions import FlatPositions, register_scheme
from mmrope.model.positions import media_tokens, placed_position_ids
from mmrope.model.tokens import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID


@register_scheme("blind_causal")
class OneIdPerBlock(FlatPositions):
    """Every media token of a block on one id, the id its first token would get as text; the text after it continues
    one id later, as if the block were one token. Media tokens still attend causally, in raster order. A 2 x 3
    image::

        tokens  x   vs  img img img img img img  ve  x
        id      0   1   2   2   2   2   2   2    3   4        rope_delta = 4 + 1 - 10 = -5

    One id on all three rows; 1D allocation. Ids are float32 and rope deltas float64, as for every scheme that
    places its media itself (:func:`mmrope.model.positions.placed_position_ids`)."""

    design = "every media token of a block on one id; text continues one id after it; causal order among them"
    allocation = "1D: every pair on the one index"
    source = "a control: the decoder's rotary offsets say nothing of a media token's place (its order still does)"
    warn_if_still = False  # still on every axis on purpose

    def position_ids(self, input_ids, grid_thw, attention_mask=None, clip=None, second_per_grid_t=None):
        media = media_tokens(input_ids, grid_thw, attention_mask, token_ids=(IMAGE_TOKEN_ID, VIDEO_TOKEN_ID),
                             spatial_merge_size=self.merge)
        if media is None:
            return placed_position_ids(input_ids, None, None, None, attention_mask)
        relative = media.offset.new_zeros(3, len(media.offset), dtype=media.grid.dtype).double()  # (3, m): all at s
        advance = media.grid.new_ones(len(media.grid)).double()  # the block takes one id
        return placed_position_ids(input_ids, media, relative, advance, attention_mask)


@register_scheme("blind")
class Blind(OneIdPerBlock):
    """``blind_causal``'s ids, and the media tokens of a block attend to each other in both directions (a prefix-LM's
    prefix, :attr:`~mmrope.model.decoder_positions.DecoderScheme.bidirectional_media`). The decoder then reads a
    block as a set: permuting its tokens permutes nothing it computes for the text (tested), so neither rotary
    offsets nor order tell it where a token came from. The control for the encoder comparison: with an encoder that
    has no positions (``none``) the model can only guess places."""

    design = "every media token of a block on one id, attending to each other both ways: the block is a set"
    source = "a control: the decoder cannot tell where a media token came from (Circle-RoPE's 'unordered' baseline)"
    bidirectional_media = True
