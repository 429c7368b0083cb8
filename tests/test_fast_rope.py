"""The fused rotary apply equals the readable one: fp32 and bf16, forward and backward, every table shape.

Compiling costs seconds per table shape and dtype on a CPU, so the full grid is ``slow``; the default run checks
one compiled case, and that the model's dispatch picks the reference unless asked otherwise.
"""

import pytest
import torch

from mmrope import fast_rope
from mmrope.fast_rope import apply_rotary_fast, rotary
from mmrope.rope import apply_rotary

B, H, N, D = 2, 3, 17, 16  # all different, so torch.compile's duck sizing ties no two dims
TABLE_SHAPES = {"(n, k)": (N, D // 2), "(b, n, k)": (B, N, D // 2), "(b, h, n, k)": (B, H, N, D // 2)}
TOLERANCE = {torch.float32: 1e-6, torch.bfloat16: 1e-2}  # max error relative to the largest output


def _check(table: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, H, N, D, generator=g).to(dtype)
    angles = torch.rand(TABLE_SHAPES[table], generator=g) * 100
    cos, sin = angles.cos().requires_grad_(), angles.sin().requires_grad_()
    grad = torch.randn(B, H, N, D, generator=g).to(dtype)
    results = []
    for fn in (apply_rotary, apply_rotary_fast):
        xr = x.clone().requires_grad_()
        out = fn(xr, cos, sin)
        out.backward(grad)
        results.append((out, xr.grad, cos.grad.clone(), sin.grad.clone()))
        cos.grad = sin.grad = None
    for name, ref, fast in zip(("out", "dx", "dcos", "dsin"), *results):
        assert fast.dtype == ref.dtype and fast.shape == ref.shape
        err = (fast.float() - ref.float()).abs().max() / ref.float().abs().max()
        assert err < TOLERANCE[dtype], f"{name}: relative error {err:.2e}"


def test_compiled_matches_reference_fp32():
    _check("(b, n, k)", torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("table", list(TABLE_SHAPES))
def test_compiled_matches_reference(table, dtype):
    _check(table, dtype)


def test_dispatch_uses_reference_unless_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(fast_rope, "apply_rotary_fast", lambda *a: calls.append("fast") or apply_rotary(*a))
    x, cos, sin = torch.randn(1, 1, 3, 4), torch.ones(3, 2), torch.zeros(3, 2)
    monkeypatch.setenv("MMROPE_FAST_ROPE", "0")
    assert torch.equal(rotary(x, cos, sin), x) and calls == []
    monkeypatch.setenv("MMROPE_FAST_ROPE", "1")
    assert torch.equal(rotary(x, cos, sin), x) and calls == ["fast"]
