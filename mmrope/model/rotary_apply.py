"""The rotary apply, fused: one pass over q (or k) instead of the reference's six elementwise kernels and a ``cat``.

The readable :func:`mmrope.model.rope.apply_rotary` makes a full trip through memory per elementwise op; on a CPU that
costs about 4-6x a plain copy of the tensor, on a GPU about as much. Two fused forms compute the same maths:

- on CUDA, :mod:`mmrope.model.triton_rope`: a Triton kernel that reads q and k once and writes each result once (the
  GPU default for an eager model: it is exact, costs no compile time beyond Triton's first launch, does not
  recompile as lengths change, and reads strided q and k straight out of the qkv projection);
- anywhere, ``apply_rotary`` under ``torch.compile`` (:func:`apply_rotary_fast`): nothing rewritten by hand, so it
  cannot drift from the reference. Opt-in on a CPU (``rotary_apply: fused``): compiling costs seconds on first
  call and again for each new dtype and for the backward, which every test process and tiny CPU run would pay.

Which one runs is decided once, when the model is built, from ``CaptionerConfig.rotary_apply``
(:func:`select_rotary_apply`): ``auto`` (Triton on CUDA, the reference elsewhere), ``fused`` (Triton on CUDA, the
compiled apply elsewhere) or ``reference``; ``MMROPE_FAST_ROPE=0`` or ``1`` overrides ``auto``. Inside a whole-model
``torch.compile`` (``model.compile: true``) every choice hands the plain maths to the enclosing trace, which fuses the
rotation with its neighbours. See docs/performance.md, "Default paths".

``dynamic=True`` compiles one kernel for every sequence length and batch size, so generation and native-resolution
images (a new length at every step) do not recompile.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

from mmrope.model.rope import apply_rotary


@functools.cache
def _compiled():
    # built on first use: importing dynamo costs seconds, which no process that never asks should pay
    return torch.compile(apply_rotary, fullgraph=True, dynamic=True)


def apply_rotary_fast(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``apply_rotary`` compiled into one fused kernel (same arguments, same result)."""
    return _compiled()(x, cos, sin)


@functools.cache
def _triton_rope():
    """:mod:`mmrope.model.triton_rope`, or None where torch comes without Triton (macOS, some CPU wheels)."""
    try:
        from mmrope.model import triton_rope
    except ImportError:
        return None
    return triton_rope


RotaryApply = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
              sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k through the readable :func:`mmrope.model.rope.apply_rotary`."""
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def _kernel_for(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor):
    if not q.is_cuda or torch.compiler.is_compiling():  # a compiled model fuses the plain maths itself
        return None
    kernel = _triton_rope()
    return kernel if kernel is not None and kernel.supports(q, cos) and kernel.supports(k, cos) else None


def triton_or_reference(q, k, cos, sin):
    """The Triton kernel for CUDA tensors it supports (q and k in one autograd node), the reference otherwise."""
    kernel = _kernel_for(q, k, cos)
    return kernel.apply_rotary_qk_triton(q, k, cos, sin) if kernel is not None else reference(q, k, cos, sin)


def triton_or_compiled(q, k, cos, sin):
    """The Triton kernel on CUDA; elsewhere the compiled apply (the plain maths inside a compiled model)."""
    kernel = _kernel_for(q, k, cos)
    if kernel is not None:
        return kernel.apply_rotary_qk_triton(q, k, cos, sin)
    if torch.compiler.is_compiling():
        return reference(q, k, cos, sin)
    return apply_rotary_fast(q, cos, sin), apply_rotary_fast(k, cos, sin)


ROTARY_APPLIES: dict[str, RotaryApply] = {"auto": triton_or_reference, "reference": reference,
                                          "fused": triton_or_compiled}


def select_rotary_apply(name: str = "auto") -> RotaryApply:
    """The rotary apply for the config's ``rotary_apply``, chosen once when the model is built. The environment
    variable ``MMROPE_FAST_ROPE``, read here, overrides ``auto``: ``0`` is the reference, ``1`` fused."""
    if name == "auto":
        name = {"0": "reference", "1": "fused"}.get(os.environ.get("MMROPE_FAST_ROPE", ""), "auto")
    if name not in ROTARY_APPLIES:
        raise ValueError(f"rotary_apply={name!r} is unknown: expected one of {', '.join(ROTARY_APPLIES)}")
    return ROTARY_APPLIES[name]
