"""Figures: the position maths, the ids, where the decoder looks, captioned images, the rotary spectrum.

    figures.py     the file-only matplotlib backend and one save helper; similarity maps, id grids, captioned images
    attention.py   attention maps from the model's own attention
    spectrum.py    how far each rotary pair of a decoder scheme turns per step and across a grid
"""
