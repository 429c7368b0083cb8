"""The stacked engine's checkpoints: the standard training checkpoint, plus this engine's training state under its
own key.

Each run's ``last.ckpt`` (and ``step<N>.ckpt``) holds what every reader needs, as Lightning's do: the weights
(``state_dict``), the ``mmrope`` entry (config and tokenizer), ``global_step`` and ``epoch``, and the module's
hyper-parameters, so ``mmrope.load``, ``mmrope eval``, the ablation's scoring, ``CaptionModule.load_from_checkpoint``
and ``mmrope train validate --ckpt_path`` read it unchanged. Its training state is this engine's own: the run's row of
the stacked AdamW state (:meth:`AdamWState.row`) under ``checkpoint["stacked"]``, read back by ``--resume``.

Why not a checkpoint Lightning resumes: Lightning's resumable state is its loops' progress counters, the data
module's and callbacks' states, and ``torch.optim`` / ``LambdaLR`` state dicts with their private fields; an engine
without a Lightning Trainer can only imitate them, and an imitation breaks silently when Lightning or torch change
them. The engine's own state is what it holds, read by the one reader of :mod:`mmrope.checkpoints`, which refuses
to resume it under Lightning in one line naming the command that can.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmrope.checkpoints import STACKED, load_weights, mmrope_entry, read_checkpoint, save_checkpoint
from mmrope.train.stacked.optim import AdamWState, FlatParameters


def write_run_checkpoint(path: Path, module, flat: FlatParameters, params: torch.Tensor, state: AdamWState,
                         run: int, runs: int, seed: int, step: int, epoch: int, lr: float) -> None:
    """Run ``run``'s checkpoint at ``step``: its row of ``params`` (r, p) copied into ``module``'s model (a
    CaptionModule), then written with its row of ``state``."""
    import lightning

    from mmrope import __version__

    with torch.no_grad():
        for name, value in flat.row(params[run].detach().cpu()).items():
            module.model.get_parameter(name).copy_(value)
    checkpoint = {
        "epoch": epoch,
        "global_step": step,
        "pytorch-lightning_version": lightning.__version__,  # CaptionModule.load_from_checkpoint reads it
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "hparams_name": "kwargs",
        "hyper_parameters": dict(module.hparams),
        "mmrope": mmrope_entry(module.config, module.tokenizer),
        STACKED: {"version": __version__, "seed": seed, "runs": runs, "optimizer": state.row(run, flat, lr)},
    }
    save_checkpoint(checkpoint, path)


def read_run_checkpoints(paths: list[Path], modules: list, flat: FlatParameters, device
                         ) -> tuple[int, AdamWState]:
    """Every run's ``last.ckpt`` for ``--resume``: weights into each module's model -> (the step they all hold, the
    stacked AdamW state). One line for a missing file, a file Lightning wrote (resumed by ``mmrope train fit``), or
    runs at different steps."""
    steps, rows = set(), []
    for path, module in zip(paths, modules):
        if not path.is_file():
            raise ValueError(f"--resume: {path} does not exist")
        _, _, weights, checkpoint = read_checkpoint(path, training_state=True, engine=STACKED)
        load_weights(module.model, weights, path)
        steps.add(int(checkpoint["global_step"]))
        rows.append(checkpoint[STACKED]["optimizer"])
    if len(steps) != 1:
        raise ValueError(f"--resume: the runs' checkpoints hold different steps ({sorted(steps)}); resume them apart")
    return steps.pop(), AdamWState.from_rows(rows, flat, device, paths)
