"""The weights and optimiser state of runs trained side by side, kept as one flat tensor per kind.

Every run's parameters sit in one row of a (runs, P) float32 tensor, in ``model.named_parameters()`` order (a tied
weight once); :meth:`FlatParameters.views` hands ``torch.func.functional_call`` each parameter as a (runs, ...) view
of it. Which elements decay is :func:`mmrope.train.optim.parameter_groups`' rule, and the learning rate of each step
is the schedule Lightning's ``LambdaLR`` follows (:func:`mmrope.train.optim.cosine_with_warmup`, the same Python
function), tabulated once on the device (:func:`lr_table`) and looked up there by a step counter, so a step never
waits for the host.

AdamW and gradient clipping are written out here rather than taken from ``torch.optim.AdamW`` and
``clip_grad_norm_``: those hold one step count and one norm per parameter, and a run must keep its own (a run that
skips a step has one step fewer, and so its own bias correction). The arithmetic is torch's, op for op, over (runs,
P) in a handful of elementwise ops. A run whose loss is not finite keeps its weights, moments and step count
(``torch.where``, no host sync); the schedule still moves on, as Lightning's does when a training step returns None.

Einstein legend: r runs, p parameter elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmrope.train.optim import OptimConfig, cosine_with_warmup, parameter_groups


@dataclass
class FlatParameters:
    """Where each parameter of a model lives in a flat row: names, shapes and offsets, and which rows decay."""

    names: list[str]
    shapes: list[torch.Size]
    offsets: list[int]
    decay: torch.Tensor  # (P,) bool: weight decay applies (parameter_groups' rule)
    group_order: list[int]  # parameter indices in torch.optim's order: the decay group, then the rest

    @classmethod
    def of(cls, model: nn.Module, weight_decay: float) -> FlatParameters:
        named = list(model.named_parameters())  # a tied weight appears once, as in model.parameters()
        names, shapes = [n for n, _ in named], [p.shape for _, p in named]
        offsets = [0]
        for p in (p for _, p in named):
            offsets.append(offsets[-1] + p.numel())
        where = {id(p): i for i, (_, p) in enumerate(named)}
        groups = parameter_groups(model, weight_decay)
        order = [where[id(p)] for g in groups for p in g["params"]]
        decayed = {where[id(p)] for p in groups[0]["params"]}
        decay = torch.zeros(offsets[-1], dtype=torch.bool)
        for i in decayed:
            decay[offsets[i]:offsets[i + 1]] = True
        return cls(names, shapes, offsets, decay, order)

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def stack(self, models: list[nn.Module]) -> torch.Tensor:
        """The models' parameters as (runs, P) float32."""
        rows = []
        for model in models:
            params = dict(model.named_parameters())
            rows.append(torch.cat([params[n].detach().float().cpu().flatten() for n in self.names]))
        return torch.stack(rows)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """name -> (runs, *shape) view of ``flat`` (runs, P); functional_call's parameters."""
        return {n: flat[:, a:b].view(flat.shape[0], *shape)
                for n, shape, a, b in zip(self.names, self.shapes, self.offsets, self.offsets[1:])}

    def row(self, flat_row: torch.Tensor) -> dict[str, torch.Tensor]:
        """name -> tensor of one run's row (P,)."""
        return {n: flat_row[a:b].view(shape)
                for n, shape, a, b in zip(self.names, self.shapes, self.offsets, self.offsets[1:])}

    def flatten(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """name -> (runs, *shape) gradients -> (runs, P), in row order."""
        return torch.cat([grads[n].flatten(1) for n in self.names], dim=1)


@dataclass
class AdamWState:
    """Every run's AdamW moments and step count; ``torch.optim.AdamW``'s state, one row per run."""

    exp_avg: torch.Tensor  # (r, P)
    exp_avg_sq: torch.Tensor  # (r, P)
    step: torch.Tensor  # (r,) float32: optimiser steps taken (skipped ones not counted)

    @classmethod
    def zeros(cls, runs: int, size: int, device) -> AdamWState:
        return cls(torch.zeros(runs, size, device=device), torch.zeros(runs, size, device=device),
                   torch.zeros(runs, device=device))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.exp_avg, self.exp_avg_sq, self.step

    def row(self, run: int, flat: FlatParameters, lr: float) -> dict:
        """Run ``run``'s state as its checkpoint holds it (``checkpoint["stacked"]["optimizer"]``, this engine's own
        format: see :mod:`mmrope.checkpoints`): its moments as flat rows, its step count, the learning rate of the
        step it would take next, and the parameter names that lay out the rows."""
        return {"parameters": list(flat.names), "exp_avg": self.exp_avg[run].detach().cpu().clone(),
                "exp_avg_sq": self.exp_avg_sq[run].detach().cpu().clone(), "step": float(self.step[run]), "lr": lr}

    @classmethod
    def from_rows(cls, rows: list[dict], flat: FlatParameters, device, where: list) -> AdamWState:
        """The inverse of :meth:`row` for every run; ``where[r]`` names run r's file in the error a row that does not
        fit this model's parameters raises."""
        out = cls.zeros(len(rows), flat.size, device)
        for r, saved in enumerate(rows):
            if saved.get("parameters") != flat.names or saved["exp_avg"].shape != (flat.size,):
                raise ValueError(f"{where[r]}: its optimizer state does not fit this model's parameters (another "
                                 "architecture?)")
            out.exp_avg[r] = saved["exp_avg"].to(device)
            out.exp_avg_sq[r] = saved["exp_avg_sq"].to(device)
            out.step[r] = float(saved["step"])
        return out


def lr_table(config: OptimConfig, total: int, device) -> torch.Tensor:
    """The learning rate of every step 0..total-1 (float64, on ``device``): what ``LambdaLR`` with
    ``cosine_with_warmup`` gives Lightning's optimizer at each step, so ``table[step]`` on the device is the same
    number."""
    factor = cosine_with_warmup(config.warmup_steps, total, config.min_lr_ratio)
    return torch.tensor([config.lr * factor(step) for step in range(total)], dtype=torch.float64, device=device)


def clip_per_run(grads: dict[str, torch.Tensor], max_norm: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each run's gradient norm (r,) and the factor (r,) ``clip_grad_norm_(max_norm)`` scales it by: the 2-norm of
    the per-parameter 2-norms, then min(1, max_norm / (norm + 1e-6)); factor 1 without ``max_norm``."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads.values()])  # (params, r)
    total = torch.linalg.vector_norm(norms, dim=0)
    if max_norm is None:
        return total, torch.ones_like(total)
    return total, torch.clamp(max_norm / (total + 1e-6), max=1.0)


def adamw_update(params: torch.Tensor, grads: torch.Tensor, state: AdamWState, lr: torch.Tensor, decay: torch.Tensor,
                 config: OptimConfig, apply: torch.Tensor) -> tuple[torch.Tensor, AdamWState]:
    """One AdamW step of every run whose ``apply`` (r,) is True -> (new params (r, P), new state); the others keep
    theirs. The arithmetic is ``torch.optim.adam._single_tensor_adam``'s, op for op (decoupled decay, lerp of the
    first moment, addcmul of the second, bias corrections from the run's own step count in double precision), so a
    run's update equals torch's up to the rounding of its inputs."""
    beta1, beta2 = config.betas
    eps = 1e-8  # torch.optim.AdamW's default, which CaptionModule keeps
    step = state.step + apply.float()  # (r,)
    bias1 = 1 - beta1 ** step.double()
    bias2 = 1 - beta2 ** step.double()
    step_size = (lr / bias1).float()[:, None]  # (r, 1): torch casts the Python double to float32 in the kernel
    bias2_sqrt = (bias2 ** 0.5).float()[:, None]
    shrink = (1 - lr * config.weight_decay).float()  # param.mul_(1 - lr * weight_decay), decay group only
    new = params * torch.where(decay, shrink, torch.ones_like(shrink))
    exp_avg = torch.lerp(state.exp_avg, grads, 1 - beta1)
    exp_avg_sq = torch.addcmul(state.exp_avg_sq * beta2, grads, grads, value=1 - beta2)
    denom = exp_avg_sq.sqrt() / bias2_sqrt + eps
    new = new + (-step_size * exp_avg) / denom  # param.addcdiv_(exp_avg, denom, value=-step_size)
    keep = apply[:, None]
    return (torch.where(keep, new, params),
            AdamWState(torch.where(keep, exp_avg, state.exp_avg), torch.where(keep, exp_avg_sq, state.exp_avg_sq),
                       step))
