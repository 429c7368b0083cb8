"""Training: ``mmrope train``, two engines over one run definition, on top of the plain-PyTorch model.

    mmrope train fit --config configs/debug.yaml                      Lightning: fit / validate / test / predict
    mmrope train stacked --run 0=runs/a/s0 --run 1=runs/a/s1 -- fit --config configs/debug.yaml
                                                                      several seeds as one set of batched weights

What both engines share:

    run.py            build_run: the seed, the data module, the model (and its tokenizer) from a resolved config;
                      where a run logs
    config_reader.py  read_config: a command line's config, resolved by the CLI's own parser, nothing built
    config_files.py   --config files read safely, parse errors as one line naming file and key
    optim.py          the AdamW parameter groups, the warmup + cosine schedule, their config
    callbacks.py      Lightning's callbacks, and the Ctrl-C / SIGTERM handling both engines stop by
    loggers.py        TensorBoard and MLflow beside the CSV logs: a config's ``logging`` section
    mmrope/checkpoints.py   the one checkpoint writer and reader (each engine's training state under its own key)

Lightning's engine (``mmrope train fit``):

    cli.py            the LightningCLI: fit / validate / test / predict from YAML configs
    module.py         CaptionModule: the training loop, validation that generates and scores captions
    datamodule.py     CaptionDataModule: shapes, clips or caption files; exact mid-epoch resume
    checkpoint_io.py  Lightning's checkpoint IO through mmrope.checkpoints: atomic writes, weights-only reads
    pretrained.py     model.vision_init: a timm ViT's weights from a file on disk into the encoder

The stacked engine (``mmrope train stacked``):

    stacked/          several seeds of one config as one set of batched weights (its ``__init__`` maps it)

``python -m mmrope.train`` and ``python train.py`` (a checkout's shortcut) are ``mmrope train`` under other names.
"""

PROG = "mmrope train"  # what every message of the trainer starts with, however it was started
