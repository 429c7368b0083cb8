"""The encoder's position encodings, one small registered class per value of ``model.vision.pos_encoding``.

    base.py        ENCODERS (the registry), PosEncoding, RotaryPosEncoding; none (no positions)
    axial.py       rope2d, rope3d, rope1d_flat, rope2d_norm, rope2d_norm_aug: every rotary pair turns with one
                   coordinate
    mixed_axes.py  rope2d_mixed, rope2d_golden, comrope_ld: pairs turn with row and column at once
    absolute.py    sincos2d, learned, rope2d_learned: a table added to the patch embeddings

This package imports its families, each of which registers its encodings in :data:`ENCODERS`; the base imports
none of them. An encoding in a user's own file subclasses :class:`PosEncoding` and registers itself with
:func:`register_encoder` in the same way (README "Model", adding an arm).
"""

# the families in the order README "Model" lists their encodings, which the registry keeps
from mmrope.model.pos_encodings import axial, mixed_axes, absolute  # noqa: F401  # isort: skip
from mmrope.model.pos_encodings.base import ENCODERS, PosEncoding, RotaryPosEncoding, register_encoder

__all__ = ["ENCODERS", "PosEncoding", "RotaryPosEncoding", "register_encoder"]
