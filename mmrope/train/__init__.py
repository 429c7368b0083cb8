"""Training: Lightning on top of the plain-PyTorch model, and the ``python -m mmrope.train`` command line.

    cli.py            the LightningCLI: fit / validate / test / predict from YAML configs
    config_reader.py  one way to read a run's config (stacked files and overrides) without running it
    module.py         CaptionModule: the training loop, validation that generates and scores captions
    datamodule.py     CaptionDataModule: shapes, clips or caption files; exact mid-epoch resume
    callbacks.py      last and best checkpoints, a clean stop on Ctrl-C, a stop on unreadable data
    checkpoint_io.py  atomic checkpoint writes and weights-only reads
    optim.py          AdamW parameter groups, warmup + cosine schedule, their config
"""
