"""Evaluation: caption metrics, the benchmarks' scorers, and scoring a checkpoint at several sizes.

    metrics.py         BLEU-4 and CIDEr-D
    shapes_scoring.py  parse a shapes caption back and check it against its scene
    clips_scoring.py   parse a clips caption back and check it against its events
    scoring.py         one function that scores generated captions, for training and ``mmrope eval`` alike
    evaluation.py      evaluation sets and ``mmrope eval``'s scoring per size and frame count
    transfer.py        what position geometry alone predicts off the training size: rules that train nothing
"""
