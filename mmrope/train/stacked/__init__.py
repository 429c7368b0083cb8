"""The stacked engine: several seeds of one configuration trained at once, as one set of batched weights
(``mmrope train stacked``).

    mmrope train stacked --run 0=runs/a/seed0 --run 1=runs/a/seed1 --run 2=runs/a/seed2 \\
        -- fit --config configs/shapes_place.yaml --trainer.max_steps=1200

Each ``--run SEED=DIR`` is the run ``mmrope train fit <args> --seed_everything SEED --data.seed SEED
--trainer.default_root_dir DIR`` would train, and ends the same way: ``DIR/checkpoints/last.ckpt`` and the training
loss in ``DIR/logs/version_N/metrics.csv``, so ``mmrope eval``, ``mmrope.load`` and the ablation's scoring read it
unchanged. A CPU trains it no faster than one run after another; what it is for is a GPU, where r runs' kernels are r
times larger (docs/performance.md, "Many runs at once").

What it shares with ``mmrope train fit``, rather than restating it:

- **the run**: each run is built by :func:`mmrope.train.run.build_run` from the config
  :func:`mmrope.train.config_reader.read_config` resolves (seed, data module, model and tokenizer), and its
  weights become one row of a (runs, P) tensor;
- **the schedule and the parameter groups** of :mod:`mmrope.train.optim` (the learning rate of each step is
  ``LambdaLR``'s, tabulated on the device), **the device and precision** as Lightning reads ``trainer.accelerator``
  and ``trainer.precision`` (``lightning.fabric``), **the logs** through Lightning's own loggers
  (:func:`mmrope.train.run.run_loggers`), **the Ctrl-C / SIGTERM handling** of
  :class:`mmrope.train.callbacks.StopOnSignal`;
- **the checkpoint writer and reader** of :mod:`mmrope.checkpoints`; its training state is its own format under its
  own key (:mod:`mmrope.train.stacked.checkpoint` says why), resumed by ``--resume``, refused by Lightning in one line.

What stays its own: the step (:mod:`~mmrope.train.stacked.step`: per-run gradients by ``torch.func``, each run's
clipping and AdamW over the flat rows in :mod:`~mmrope.train.stacked.optim`, a non-finite loss skipping that run
alone, decided on the device), and each step's batches (:mod:`~mmrope.train.stacked.data`: every run's own data
module, sampler and collator, drawn by Pillow or on the device). ``stack: auto`` takes vmap on a GPU and a loop
over the runs on a CPU; ``compile`` wraps the whole step in ``torch.compile``. Not done here: validation during
training (the ablation scores each run after it), several devices, real caption files (shapes and clips only).

Resume: ``--resume`` continues every run from its ``last.ckpt`` (written by this engine; all at one step), with the
same data order. Ctrl-C or SIGTERM finishes the step in flight, writes every run's ``last.ckpt`` and exits with
128 + the signal. Without ``--resume`` a folder that holds a ``last.ckpt`` (either engine's) is refused unless
``--overwrite`` says to delete its checkpoints; two runs may not share a folder.

    cli.py          the ``mmrope train stacked`` command line
    engine.py       StackedTrainer: builds the runs, trains them, logs and saves each
    step.py         one optimiser step of every run, as one function of tensors (vmap or a loop; compilable)
    optim.py        the flat (runs, P) parameters, the per-run AdamW state and update, per-run clipping
    data.py         every run's batch at each step, stacked
    checkpoint.py   each run's checkpoint: the standard one plus this engine's training state
"""

from mmrope.train.stacked.cli import PROG, main
from mmrope.train.stacked.engine import EngineOptions, StackedTrainer

__all__ = ["PROG", "EngineOptions", "StackedTrainer", "main"]
