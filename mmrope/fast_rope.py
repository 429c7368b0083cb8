"""The rotary apply, fused: :func:`mmrope.rope.apply_rotary` compiled into one pass over q (or k).

The readable ``apply_rotary`` runs six elementwise kernels and a ``cat``, each a full trip through memory; on a CPU
that costs about 4-6x a plain copy of the tensor. Compiled, the same maths is one loop that reads x and the half
tables once and writes the result once, close to the copy bound. Nothing is rewritten by hand, so the fast path
cannot drift from the reference: it *is* the reference, traced.

When it runs (see docs/performance.md, "Default paths"):

- a whole-model ``torch.compile`` (``model.compile: true``) already fuses the rotary maths with its neighbours, so
  :func:`rotary` hands the plain function to the enclosing trace;
- otherwise the fast path is opt-in, with ``MMROPE_FAST_ROPE=1``: compiling costs seconds on first call and again for
  each new dtype and for the backward, which every test process and tiny CPU run would pay for no gain.

``dynamic=True`` compiles one kernel for every sequence length and batch size, so generation and native-resolution
images (a new length at every step) do not recompile.
"""

from __future__ import annotations

import functools
import os

import torch

from mmrope.rope import apply_rotary


@functools.cache
def _compiled():
    # built on first use: importing dynamo costs seconds, which no process that never asks should pay
    return torch.compile(apply_rotary, fullgraph=True, dynamic=True)


def apply_rotary_fast(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``apply_rotary`` compiled into one fused kernel (same arguments, same result)."""
    return _compiled()(x, cos, sin)


def fast_rope_enabled() -> bool:
    """``MMROPE_FAST_ROPE=1`` (read at each call, so a test or script can switch it)."""
    return os.environ.get("MMROPE_FAST_ROPE", "0") == "1"


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """What :class:`mmrope.layers.Attention` calls: the plain maths inside a compiled model (the enclosing graph
    fuses it), the compiled kernel when ``MMROPE_FAST_ROPE=1``, the readable reference otherwise."""
    if not torch.compiler.is_compiling() and fast_rope_enabled():
        return apply_rotary_fast(x, cos, sin)
    return apply_rotary(x, cos, sin)
