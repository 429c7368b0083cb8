"""The weights and optimiser state of runs trained side by side, kept as one flat tensor per kind.

Every run's parameters sit in one row of a (runs, P) float32 tensor, in ``model.named_parameters()`` order (a tied
weight once); :meth:`FlatParameters.views` hands ``torch.func.functional_call`` each parameter as a (runs, ...) view
of it. AdamW then updates all runs in a handful of elementwise ops over (runs, P), each run with its own moments, its
own step count and its own gradient clipping, exactly as ``torch.optim.AdamW`` (single-tensor form, the CPU default)
and ``torch.nn.utils.clip_grad_norm_`` update one run; the learning rate follows the schedule of
:mod:`mmrope.train.optim` and is worked out on the device from a step counter, so a step never waits for the host.

A run whose loss is not finite keeps its weights, moments and step count (``torch.where``, no host sync); the
schedule still moves on, as Lightning's does when a training step returns None.

Einstein legend: r runs, p parameter elements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mmrope.train.optim import OptimConfig, parameter_groups


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

    def to_torch(self, run: int, flat: FlatParameters, config: OptimConfig, lr: float, initial_lr: float) -> dict:
        """Run ``run``'s state as ``torch.optim.AdamW(parameter_groups(model, ...)).state_dict()`` holds it, so a
        checkpoint's ``optimizer_states`` read as any other."""
        exp_avg, exp_avg_sq = flat.row(self.exp_avg[run].cpu()), flat.row(self.exp_avg_sq[run].cpu())
        step = self.step[run].detach().cpu().clone()
        state = {}
        if float(step) > 0:  # torch.optim has no state for a parameter before its first step
            state = {k: {"step": step.clone(), "exp_avg": exp_avg[flat.names[i]].clone(),
                         "exp_avg_sq": exp_avg_sq[flat.names[i]].clone()} for k, i in enumerate(flat.group_order)}
        decay = sum(1 for i in flat.group_order if flat.decay[flat.offsets[i]])
        common = {"lr": lr, "betas": tuple(config.betas), "eps": 1e-8, "amsgrad": False, "foreach": None,
                  "maximize": False, "capturable": False, "differentiable": False, "fused": None,
                  "decoupled_weight_decay": True, "initial_lr": initial_lr}
        groups = [{**common, "weight_decay": config.weight_decay, "params": list(range(decay))},
                  {**common, "weight_decay": 0.0, "params": list(range(decay, len(flat.group_order)))}]
        return {"state": state, "param_groups": groups}

    @classmethod
    def from_torch(cls, states: list[dict], flat: FlatParameters, device) -> AdamWState:
        """The inverse of :meth:`to_torch` for every run."""
        out = cls.zeros(len(states), flat.size, device)
        for r, saved in enumerate(states):
            for k, i in enumerate(flat.group_order):
                entry = saved["state"].get(k)
                if entry is None:
                    continue
                a, b = flat.offsets[i], flat.offsets[i + 1]
                out.exp_avg[r, a:b] = entry["exp_avg"].flatten().to(device)
                out.exp_avg_sq[r, a:b] = entry["exp_avg_sq"].flatten().to(device)
                out.step[r] = float(entry["step"])
        return out


def scheduled_lr(step: torch.Tensor, config: OptimConfig, total: int) -> torch.Tensor:
    """``lr * cosine_with_warmup(warmup, total, min_ratio)(step)`` in float64 on the device of ``step`` (a 0-d
    counter): the factor LambdaLR gives a step, computed without the host."""
    step = step.double()
    warmup = config.warmup_steps
    progress = ((step - warmup) / max(1, total - warmup)).clamp(max=1.0)
    cosine = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + torch.cos(math.pi * progress))
    factor = torch.where(step < warmup, (step + 1) / max(warmup, 1), cosine)
    return config.lr * factor


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
