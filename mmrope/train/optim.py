"""Optimisation: AdamW with decoupled weight decay on matrices only, linear warmup then cosine decay, and the
``model.optim`` config that sets them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.05  # not applied to norms, biases, embeddings of positions or RoPE-Mixed frequencies
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step

    def __post_init__(self):
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"model.optim.{name}={getattr(self, name)!r}: expected {expected}")

        if not _finite_number(self.lr) or not self.lr > 0:
            raise bad("lr", "a positive, finite learning rate")
        if not _finite_number(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "a finite number >= 0")
        betas = list(self.betas) if isinstance(self.betas, (list, tuple)) else None
        if betas is None or len(betas) != 2 or not all(_finite_number(b) and 0 <= b < 1 for b in betas):
            raise bad("betas", "two numbers in [0, 1), such as [0.9, 0.98]")
        self.betas = (float(betas[0]), float(betas[1]))
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise bad("warmup_steps", "a whole number >= 0")
        if not _finite_number(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "a number in [0, 1]")


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def cosine_with_warmup(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: norms, biases (ndim < 2) and parameters flagged ``no_weight_decay`` are left alone."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or getattr(p, "no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
