"""The rotary apply as one Triton kernel: the GPU's eager fast path, one read of x and one write of the result.

The same maths as :func:`mmrope.rope.apply_rotary` (rotate-half layout, half tables, float32 arithmetic, result in
x's dtype), written out so that nothing is read or written twice::

    program (bh, i) takes rows i*BLOCK_N .. of one (batch, head) slice of x (b, h, n, d), d = 2k:
        x1, x2 = x[.., :k], x[.., k:]           loaded once, widened to float32
        c, s   = cos[.., :k], sin[.., :k]        the table row of the same (batch, head, token); stride 0 where
                                                 the table is shared (an (n, k) or (b, n, k) table)
        out    = [x1 c - x2 s, x2 c + x1 s]      stored once, in x's dtype

The backward of a rotation is the rotation by minus the angle, so the input gradient is the same kernel with sin
negated. Gradients of the tables (only RoPE-Mixed learns its angles) are two products summed over the heads, done
in plain PyTorch. x may be any strided view whose last dimension is contiguous (q and k straight out of the fused
qkv projection), so no copy precedes the kernel.

Measured on an H200 (docs/performance.md, section 6): 63-76% of the device-to-device copy bandwidth forward in fp32,
46-61% in bf16, 3.7-9.9x faster than the eager reference. Each program re-reads its table rows for every head (from
L2), likely what holds bf16 back (not profiled); a program per block of tokens rotating every head of q and k would
read them once.

On a CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``), which is how the test suite checks them
without a GPU; :mod:`mmrope.fast_rope` decides when the model calls them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _rotary_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, heads, seq,
                   x_sb, x_sh, x_sn, t_sb, t_sh, t_sn, o_sb, o_sh, o_sn,
                   PAIRS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SIGN: tl.constexpr):
    bh = tl.program_id(0)
    b, h = (bh // heads).to(tl.int64), (bh % heads).to(tl.int64)  # 64-bit offsets: x may pass 2^31 elements
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < seq) & (cols[None, :] < PAIRS)

    x1_ptr = x_ptr + b * x_sb + h * x_sh + rows[:, None] * x_sn + cols[None, :]
    x1 = tl.load(x1_ptr, mask=mask).to(tl.float32)
    x2 = tl.load(x1_ptr + PAIRS, mask=mask).to(tl.float32)
    t_off = b * t_sb + h * t_sh + rows[:, None] * t_sn + cols[None, :]
    c = tl.load(cos_ptr + t_off, mask=mask).to(tl.float32)
    s = tl.load(sin_ptr + t_off, mask=mask).to(tl.float32) * SIGN

    o1_ptr = out_ptr + b * o_sb + h * o_sh + rows[:, None] * o_sn + cols[None, :]
    tl.store(o1_ptr, (x1 * c - x2 * s).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o1_ptr + PAIRS, (x2 * c + x1 * s).to(out_ptr.dtype.element_ty), mask=mask)


def _table_4d(table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(n, k), (b, n, k) or (b, h, n, k) -> a (b, h, n, k) view, stride 0 on the shared dimensions."""
    if table.ndim == 3:
        table = table.unsqueeze(1)
    b, h, n, _ = x.shape
    return table.expand(b, h, n, table.shape[-1])


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Launch the kernel: x (b, h, n, d) by the half tables (n, k), (b, n, k) or (b, h, n, k); ``inverse`` turns by
    minus the angle. Returns a new contiguous tensor in x's dtype. No autograd (see :func:`apply_rotary_triton`)."""
    if cos.shape[-1] * 2 != x.shape[-1]:
        raise ValueError(f"rotary table has {cos.shape[-1]} pairs but head_dim is {x.shape[-1]}: expected head_dim / 2")
    if x.stride(-1) != 1:
        x = x.contiguous()
    if cos.shape != sin.shape:
        raise ValueError(f"cos {tuple(cos.shape)} and sin {tuple(sin.shape)} tables differ: expected one shape")
    cos4, sin4 = _table_4d(cos.contiguous(), x), _table_4d(sin.contiguous(), x)  # one stride for both
    b, h, n, d = x.shape
    out = torch.empty((b, h, n, d), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    pairs = d // 2
    block_k = triton.next_power_of_2(pairs)
    block_n = max(1, min(triton.next_power_of_2(n), 4096 // block_k))  # ~4096 elements per half tile
    grid = (b * h, triton.cdiv(n, block_n))
    _rotary_kernel[grid](x, cos4, sin4, out, h, n, *x.stride()[:3], *cos4.stride()[:3], *out.stride()[:3],
                         PAIRS=pairs, BLOCK_N=block_n, BLOCK_K=block_k, SIGN=-1.0 if inverse else 1.0)
    return out


class _RotaryFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(x if (cos.requires_grad or sin.requires_grad) else None, cos, sin)
        return rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        x, cos, sin = ctx.saved_tensors
        grad_x = rotate(grad, cos, sin, inverse=True) if ctx.needs_input_grad[0] else None
        grad_cos = grad_sin = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # out1 = x1 c - x2 s, out2 = x2 c + x1 s  =>  dc = g1 x1 + g2 x2, ds = g2 x1 - g1 x2 (summed where shared)
            g1, g2 = grad.float().chunk(2, dim=-1)
            x1, x2 = x.float().chunk(2, dim=-1)
            grad_cos = _sum_to(g1 * x1 + g2 * x2, cos)
            grad_sin = _sum_to(g2 * x1 - g1 * x2, sin)
        return grad_x, grad_cos, grad_sin


def _sum_to(grad: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Sum a (b, h, n, k) gradient over the dimensions ``table`` was shared across, back to its shape and dtype."""
    if table.ndim == 2:
        grad = grad.sum((0, 1))
    elif table.ndim == 3:
        grad = grad.sum(1).sum_to_size(table.shape)
    else:
        grad = grad.sum_to_size(table.shape)
    return grad.to(table.dtype)


def apply_rotary_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`mmrope.rope.apply_rotary` as one Triton kernel, with autograd (x, and the tables when they need it)."""
    return _RotaryFunction.apply(x, cos, sin)


def supports(x: torch.Tensor, cos: torch.Tensor) -> bool:
    """Whether the kernel computes exactly what the reference does for these inputs: a float16/bfloat16/float32 x
    and float32 tables (the reference widens to float64 when any input is float64; the kernel never does)."""
    return x.dtype in SUPPORTED_DTYPES and cos.dtype == torch.float32 and x.ndim == 4 and cos.ndim in (2, 3, 4)
