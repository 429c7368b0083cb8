"""Training: two engines over one run definition, on top of the plain-PyTorch model.

    python -m mmrope.train fit --config configs/debug.yaml            Lightning: fit / validate / test / predict
    python -m mmrope.train.stacked --run 0=runs/a/s0 --run 1=runs/a/s1 -- fit --config configs/debug.yaml
                                                                      several seeds as one set of batched weights

What both engines share:

    run.py            build_run: the seed, the data module, the model (and its tokenizer) from a resolved config;
                      where a run logs
    config_reader.py  read_config: a command line's config, resolved by the CLI's own parser, nothing built
    optim.py          the AdamW parameter groups, the warmup + cosine schedule, their config
    callbacks.py      Lightning's callbacks, and the Ctrl-C / SIGTERM handling both engines stop by
    mmrope/checkpoints.py   the one checkpoint writer and reader (each engine's training state under its own key)

Lightning's engine (``python -m mmrope.train``):

    cli.py            the LightningCLI: fit / validate / test / predict from YAML configs
    module.py         CaptionModule: the training loop, validation that generates and scores captions
    datamodule.py     CaptionDataModule: shapes, clips or caption files; exact mid-epoch resume
    checkpoint_io.py  Lightning's checkpoint IO through mmrope.checkpoints: atomic writes, weights-only reads

The stacked engine (``python -m mmrope.train.stacked``): :mod:`mmrope.train.stacked`.

``python train.py`` in a checkout is ``python -m mmrope.train``.
"""

PROG = "train.py"  # what every message of the trainer starts with
