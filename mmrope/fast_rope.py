"""The rotary apply, fused: one pass over q (or k) instead of the reference's six elementwise kernels and a ``cat``.

The readable :func:`mmrope.rope.apply_rotary` makes a full trip through memory per elementwise op; on a CPU that
costs about 4-6x a plain copy of the tensor, on a GPU about as much. Two fused forms compute the same maths:

- on CUDA, :mod:`mmrope.triton_rope`: a Triton kernel that reads q and k once and writes each result once (the
  GPU default for an eager model: it is exact, costs no compile time beyond Triton's first launch, does not
  recompile as lengths change, and reads strided q and k straight out of the qkv projection);
- anywhere, ``apply_rotary`` under ``torch.compile`` (:func:`apply_rotary_fast`): nothing rewritten by hand, so it
  cannot drift from the reference. Opt-in on a CPU with ``MMROPE_FAST_ROPE=1``: compiling costs seconds on first
  call and again for each new dtype and for the backward, which every test process and tiny CPU run would pay.

Inside a whole-model ``torch.compile`` (``model.compile: true``) :func:`rotary` hands the plain function to the
enclosing trace, which fuses the rotation with its neighbours. ``MMROPE_FAST_ROPE=0`` forces the reference
everywhere. See docs/performance.md, "Default paths".

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


def fast_rope_mode() -> str:
    """``MMROPE_FAST_ROPE``: "0" reference everywhere, "1" fused everywhere, unset: fused on CUDA only (read at
    each call, so a test or script can switch it)."""
    return os.environ.get("MMROPE_FAST_ROPE", "auto")


@functools.cache
def _triton_rope():
    """:mod:`mmrope.triton_rope`, or None where torch comes without Triton (macOS, some CPU wheels)."""
    try:
        from mmrope import triton_rope
    except ImportError:
        return None
    return triton_rope


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
           sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What :class:`mmrope.layers.Attention` calls to rotate its queries and keys: the plain maths inside a compiled
    model (the enclosing graph fuses it); the Triton kernel for CUDA tensors (q and k in one autograd node); the
    compiled apply when ``MMROPE_FAST_ROPE=1``; the readable reference otherwise."""
    mode = fast_rope_mode()
    if torch.compiler.is_compiling() or mode == "0":
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if q.is_cuda and (kernel := _triton_rope()) is not None and kernel.supports(q, cos) and kernel.supports(k, cos):
        return kernel.apply_rotary_qk_triton(q, k, cos, sin)
    if mode == "1":
        return apply_rotary_fast(q, cos, sin), apply_rotary_fast(k, cos, sin)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
