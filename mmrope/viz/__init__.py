"""Figures: the position maths, the ids, where the decoder looks, captioned images, the rotary spectrum.

    figures.py       the file-only matplotlib backend and one save helper; id grids, captioned images, overlays
    similarity.py    q·k against relative (Δrow, Δcol) offset for any rotary encoder encoding
    sequence_ids.py  the (t, h, w) ids any decoder scheme gives an image + caption (``mmrope demo``, ``viz ids``)
    attention.py     attention maps from the model's own attention
    spectrum.py      how far each rotary pair of a decoder scheme turns per step and across a grid
    curves.py        a run's loss and metrics against step, ``mmrope eval``'s against size
"""
