"""The fused rotary applies equal the readable one: fp32 and bf16, forward and backward, every table shape.

Compiling costs seconds per table shape and dtype on a CPU, so the full compiled grid is ``slow``; the default run
checks one compiled case, the Triton kernel on every case in Triton's interpreter (no GPU needed), and the model's
dispatch. On a GPU, ``pytest -m gpu`` runs the kernel for real.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmrope.model import rotary_apply
from mmrope.model.layers import Attention
from mmrope.model.rope import apply_rotary
from mmrope.model.rotary_apply import apply_rotary_fast, reference, select_rotary_apply

B, H, N, D = 2, 3, 17, 16  # all different, so torch.compile's duck sizing ties no two dims
TABLE_SHAPES = {"(n, k)": (N, D // 2), "(b, n, k)": (B, N, D // 2), "(b, h, n, k)": (B, H, N, D // 2)}
TOLERANCE = {torch.float32: 1e-6, torch.bfloat16: 1e-2}  # max error relative to the largest output


def _check(table: str, dtype: torch.dtype, fast=apply_rotary_fast, device: str = "cpu", strided: bool = False,
           head_dim: int = D) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, H, N, head_dim, generator=g).to(dtype)
    if strided:  # q as the qkv projection leaves it: (b, n, h, d) memory seen as (b, h, n, d)
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    angles = torch.rand(TABLE_SHAPES[table][:-1] + (head_dim // 2,), generator=g) * 100
    cos, sin = angles.cos().to(device).requires_grad_(), angles.sin().to(device).requires_grad_()
    grad = torch.randn(B, H, N, head_dim, generator=g).to(dtype).to(device)
    results = []
    for fn in (apply_rotary, fast):
        xr = x.to(device).clone().requires_grad_()  # clone keeps the strides
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


def _check_qk(table: str, dtype: torch.dtype, device: str, kv_heads: int = H, n: int = N, head_dim: int = D) -> None:
    """q and k in one call, as the attention layer makes it: strided views of one qkv projection, GQA (k with fewer
    heads), learnable tables; outputs and every gradient against the reference applied to each."""
    from mmrope.model.triton_rope import apply_rotary_qk_triton

    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(B, n, H + 2 * kv_heads, head_dim, generator=g).to(dtype).to(device)
    q, k = qkv[:, :, :H].transpose(1, 2), qkv[:, :, H:H + kv_heads].transpose(1, 2)  # (b, h, n, d), (b, g, n, d)
    angles = torch.rand(TABLE_SHAPES[table][:-2] + (n, head_dim // 2), generator=g) * 100
    grads = [torch.randn(t.shape, generator=g).to(dtype).to(device) for t in (q, k)]
    results = []
    for rotate_qk in (lambda *a: (apply_rotary(a[0], *a[2:]), apply_rotary(a[1], *a[2:])), apply_rotary_qk_triton):
        cos, sin = angles.cos().to(device).requires_grad_(), angles.sin().to(device).requires_grad_()
        qr, kr = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
        outs = rotate_qk(qr, kr, cos, sin)
        torch.autograd.backward(outs, grads)
        results.append((*outs, qr.grad, kr.grad, cos.grad, sin.grad))
    for name, ref, fast in zip(("q", "k", "dq", "dk", "dcos", "dsin"), *results):
        assert fast.dtype == ref.dtype and fast.shape == ref.shape, name
        err = (fast.float() - ref.float()).abs().max() / ref.float().abs().max()
        assert err < TOLERANCE[dtype], f"{table} {dtype} {name}: relative error {err:.2e}"


def check_triton(device: str) -> None:
    """The Triton kernel against the reference on every table shape and dtype: one tensor, contiguous and strided,
    and q with k in one call (GQA, strided out of one qkv projection), and tiles smaller than a sample."""
    from mmrope.model.triton_rope import apply_rotary_triton

    for table in TABLE_SHAPES:
        for dtype in TOLERANCE:
            for strided in (False, True):
                _check(table, dtype, apply_rotary_triton, device, strided)
            _check_qk(table, dtype, device)
    for head_dim in (4, 24):  # a single-pair table row; pairs not a power of two (masked columns)
        _check("(b, n, k)", torch.float32, apply_rotary_triton, device, head_dim=head_dim)
    _check_qk("(b, n, k)", torch.float32, device, kv_heads=1)  # grouped-query attention
    _check_qk("(b, n, k)", torch.bfloat16, device, kv_heads=1, n=1)  # decoding: one token
    _check_tiles(device)


def _check_tiles(device: str) -> None:
    """Small tiles, so that a sample spans several programs: 1 token x 2 of the 3 heads (the last head block
    half masked) and 2 tokens x 4 heads (the last token block half masked), turning both ways."""
    from mmrope.model.triton_rope import rotate

    g = torch.Generator().manual_seed(2)
    q = torch.randn(B, H, N, D, generator=g).to(device)
    angles = torch.rand(B, H, N, D // 2, generator=g) * 100
    cos, sin = angles.cos().to(device), angles.sin().to(device)
    for tile in (16, 64):
        for inverse in (False, True):
            out, _ = rotate(q, None, cos, sin, inverse=inverse, tile=tile)
            ref = apply_rotary(q, cos, -sin if inverse else sin)
            assert (out - ref).abs().max() < 1e-6 * ref.abs().max(), f"tile {tile}, inverse {inverse}"


HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_triton_kernel_matches_reference_in_interpreter():
    # TRITON_INTERPRET is read when a kernel is defined, so the check runs in a fresh process
    code = "import test_fast_rope; test_fast_rope.check_triton('cpu')"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_kernel_matches_reference_on_gpu():
    check_triton("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_dispatch_takes_the_kernel(monkeypatch):
    from mmrope.model import triton_rope

    calls = []
    monkeypatch.setattr(triton_rope, "apply_rotary_qk_triton",
                        lambda q, k, *t: calls.append("triton") or (apply_rotary(q, *t), apply_rotary(k, *t)))
    monkeypatch.delenv("MMROPE_FAST_ROPE", raising=False)
    rotary = select_rotary_apply("auto")
    x, cos, sin = torch.randn(1, 1, 3, 4, device="cuda"), torch.ones(3, 2, device="cuda"), torch.zeros(3, 2,
                                                                                                         device="cuda")
    assert torch.equal(rotary(x, x, cos, sin)[1], x) and calls == ["triton"]
    assert torch.equal(rotary(x.double(), x.double(), cos.double(), sin.double())[0], x.double())
    assert calls == ["triton"]  # float64 goes to the reference


def test_the_rotary_apply_is_chosen_once_at_build(monkeypatch):
    from test_model import tiny_config

    from mmrope.model.captioner import Captioner

    calls = []
    monkeypatch.setattr(rotary_apply, "apply_rotary_fast", lambda *a: calls.append("fast") or apply_rotary(*a))
    x, cos, sin = torch.randn(1, 1, 3, 4), torch.ones(3, 2), torch.zeros(3, 2)
    monkeypatch.delenv("MMROPE_FAST_ROPE", raising=False)
    auto = select_rotary_apply()  # the default: the reference on a CPU
    assert torch.equal(auto(x, x, cos, sin)[0], x) and calls == []
    monkeypatch.setenv("MMROPE_FAST_ROPE", "0")
    assert select_rotary_apply() is reference
    monkeypatch.setenv("MMROPE_FAST_ROPE", "1")
    fused = select_rotary_apply()
    assert torch.equal(fused(x, x, cos, sin)[1], x) and calls == ["fast", "fast"]
    assert select_rotary_apply("reference") is reference  # explicit choices are not overridden
    with pytest.raises(ValueError, match="rotary_apply='triton' is unknown"):
        select_rotary_apply("triton")

    monkeypatch.setenv("MMROPE_FAST_ROPE", "0")
    model = Captioner(tiny_config())  # built under "0": its choice no longer reads the environment
    monkeypatch.setenv("MMROPE_FAST_ROPE", "1")
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    assert attentions and all(m.rotary is reference for m in attentions)
    model.train()(torch.randn(1, 3, 32, 32), torch.tensor([[3] + [5] * 4 + [4, 10]]))
    assert calls == ["fast", "fast"]  # unchanged: the model never took the fused path


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_on_gpu_matches_the_reference_path(monkeypatch):
    """The whole captioner on CUDA (every rotation through the kernel) against the reference: loss and grads."""
    from test_model import caption_batch, tiny_config

    from mmrope.model.captioner import Captioner

    torch.manual_seed(0)
    model = Captioner(tiny_config()).cuda()
    images, input_ids, attention_mask, labels = (t.cuda() if isinstance(t, torch.Tensor) else [i.cuda() for i in t]
                                                 for t in caption_batch([(32, 48), (48, 32)], [[7, 8], [9]]))
    results = []
    for mode in ("auto", "reference"):
        for attention in (m for m in model.modules() if isinstance(m, Attention)):
            attention.rotary = select_rotary_apply(mode)
        model.zero_grad()
        loss = model(images, input_ids, attention_mask, labels).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for fast, ref in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-6)
