"""Random draws a module makes in training (HoPE's temporal scale, DINOv3's coordinate rescale), reproducible and
resumable: they never touch torch's global stream, so initialisation and data order stay those of any other arm at
the same seed, and a resumed run draws exactly what the uninterrupted one would have.

Draw number c of a run seeded with S (``torch.initial_seed()`` when the module is built: the run's seed) comes from
a generator seeded by sha512("S:c") (``random.Random``'s string seed). (S, c) is the module's extra state, saved in
``state_dict`` and so in every checkpoint.
"""

from __future__ import annotations

import random

import torch


class TrainingDraws:
    """Mixed into an ``nn.Module``: :meth:`next_generator` for each training draw, (seed, draws) kept as the
    module's extra state."""

    def init_draws(self) -> None:
        self.seed = torch.initial_seed() % 2**63  # fits the int64 extra state
        self.draws = 0

    def next_generator(self) -> torch.Generator:
        generator = torch.Generator().manual_seed(random.Random(f"{self.seed}:{self.draws}").getrandbits(63))
        self.draws += 1
        return generator

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([self.seed, self.draws])

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.seed, self.draws = (int(v) for v in state)
