"""The rotary apply as a Triton kernel: one read of q (or k) and the table, one write of the result.

The same maths as :func:`mmrope.model.rope.apply_rotary` (rotate-half layout, half tables, float32 arithmetic, result in
x's dtype), laid out so that nothing is read or written twice::

    program (b, token block i, head block j) of x (b, h, n, d), d = 2k, takes a (BLOCK_T, BLOCK_H, k) tile:
        c, s   = cos[b, tokens], sin[b, tokens]      the tile's table rows, the same for each of its heads
        x1, x2 = x[b, heads, tokens, :k], [.., k:]   loaded once, widened to float32
        out    = [x1 c - x2 s, x2 c + x1 s]          stored once, in x's dtype

Strides say how the table is shared: batch stride 0 for an (n, k) table, head stride 0 unless the table is per
head ((b, h, n, k), RoPE-Mixed), so a tile's heads read the same table rows (from cache after the first). q and k
are two launches inside one autograd node.

Measured on an H200 (docs/performance.md, section 6), side by side with a layout that gave each program a block of
tokens and looped over every head of q and k, holding the table rows in registers: this loop-free one reached
67-80% of the device-to-device copy bandwidth forward against 55-78% (fp32 and bf16, both table shapes; ahead or
level in every row). Reading the table once or twice made no difference to the looping kernel, so table traffic is
not what holds them below the copy; nothing further was profiled.

The backward of a rotation is the rotation by minus the angle, so the input gradients are the same kernel with sin
negated. Gradients of the tables (only RoPE-Mixed learns its angles) are two products summed over the heads, done
in plain PyTorch. q and k may be any strided views whose last dimension is contiguous (straight out of the fused
qkv projection), so no copy precedes the kernel.

On a CPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``), which is how the test suite checks it
without a GPU; :mod:`mmrope.model.rotary_apply` decides when the model calls it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TILE = 2048  # elements of half a (tokens, heads, head_dim) tile: BLOCK_T * BLOCK_H * BLOCK_K
NUM_WARPS = 4


@triton.jit
def _rotary_kernel(x_ptr, cos_ptr, sin_ptr, o_ptr, seq, heads, x_sb, x_sh, x_sn, t_sb, t_sh, t_sn, o_sb, o_sh, o_sn,
                   PAIRS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                   SIGN: tl.constexpr):
    blocks = tl.cdiv(seq, BLOCK_T)
    b = (tl.program_id(0) // blocks).to(tl.int64)  # 64-bit offsets: x may pass 2^31 elements
    rows = ((tl.program_id(0) % blocks) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)[:, None, None]
    hs = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)[None, :, None]
    cols = tl.arange(0, BLOCK_K)[None, None, :]
    mask = (rows < seq) & (hs < heads) & (cols < PAIRS)
    t_off = b * t_sb + hs * t_sh + rows * t_sn + cols  # t_sh is 0 unless the table is per head
    c = tl.load(cos_ptr + t_off, mask=mask).to(tl.float32)
    s = tl.load(sin_ptr + t_off, mask=mask).to(tl.float32) * SIGN
    x_off, o_off = b * x_sb + hs * x_sh + rows * x_sn + cols, b * o_sb + hs * o_sh + rows * o_sn + cols
    x1 = tl.load(x_ptr + x_off, mask=mask).to(tl.float32)
    x2 = tl.load(x_ptr + x_off + PAIRS, mask=mask).to(tl.float32)
    tl.store(o_ptr + o_off, (x1 * c - x2 * s).to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(o_ptr + o_off + PAIRS, (x2 * c + x1 * s).to(o_ptr.dtype.element_ty), mask=mask)


def _table_strides(table: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, token) strides of an (n, k), (b, n, k) or (b, h, n, k) table: 0 where it is shared."""
    shape, stride = _as_4d(table.shape), _as_4d(table.stride())
    return tuple(0 if size == 1 else st for size, st in zip(shape[:3], stride[:3]))


def _as_4d(sizes) -> tuple[int, int, int, int]:
    """Table sizes (or strides) as (b, h, n, k), 1 for the dimensions the table leaves out."""
    if len(sizes) == 2:
        return (1, 1, *sizes)
    if len(sizes) == 3:
        return (sizes[0], 1, *sizes[1:])
    return tuple(sizes)


def rotate(q: torch.Tensor, k: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False, *,
           tile: int = TILE, num_warps: int = NUM_WARPS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the kernel on q (b, h, n, d) and k (b, g, n, d) (or None) with the half tables (n, k), (b, n, k) or
    (b, h, n, k); ``inverse`` turns by minus the angle. Returns new contiguous tensors in the inputs' dtypes. No
    autograd (see :func:`apply_rotary_qk_triton`). ``tile`` and ``num_warps`` set the launch
    (benchmarks/bench_rope_gpu.py sweeps them)."""
    if cos.shape[-1] * 2 != q.shape[-1]:
        raise ValueError(f"rotary table has {cos.shape[-1]} pairs but head_dim is {q.shape[-1]}: expected head_dim / 2")
    if cos.shape != sin.shape:
        raise ValueError(f"cos {tuple(cos.shape)} and sin {tuple(sin.shape)} tables differ: expected one shape")
    cos, sin = cos.contiguous(), sin.contiguous()  # one set of strides serves both
    t_sb, t_sh, t_sn = _table_strides(cos)
    outs = []
    for x in (q, k):
        if x is None:
            outs.append(None)
            continue
        x = x if x.stride(-1) == 1 else x.contiguous()
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        outs.append(out)
        b, heads, n, d = x.shape
        if out.numel() == 0:
            continue
        pairs = d // 2
        block_k = triton.next_power_of_2(pairs)
        block_h = min(triton.next_power_of_2(heads), max(1, tile // block_k))
        block_t = max(1, min(triton.next_power_of_2(n), tile // (block_k * block_h)))
        _rotary_kernel[(b * triton.cdiv(n, block_t), triton.cdiv(heads, block_h))](
            x, cos, sin, out, n, heads, *x.stride()[:3], t_sb, t_sh, t_sn, *out.stride()[:3], PAIRS=pairs,
            BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_K=block_k, SIGN=-1.0 if inverse else 1.0, num_warps=num_warps)
    return outs[0], outs[1]


class _RotaryFunction(torch.autograd.Function):
    """q and k (k may be None) in one autograd node: one Python call each way, not two."""

    @staticmethod
    def forward(ctx, q, k, cos, sin):
        tables_learn = cos.requires_grad or sin.requires_grad
        ctx.save_for_backward(q if tables_learn else None, k if tables_learn else None, cos, sin)
        return rotate(q, k, cos, sin)

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        q, k, cos, sin = ctx.saved_tensors
        needed = any(ctx.needs_input_grad[:2])
        dq, dk = rotate(grad_q, grad_k, cos, sin, inverse=True) if needed else (None, None)
        grad_cos = grad_sin = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            # out1 = x1 c - x2 s, out2 = x2 c + x1 s  =>  dc = g1 x1 + g2 x2, ds = g2 x1 - g1 x2 (summed where shared)
            grad_cos, grad_sin = _table_grads(q, grad_q, cos)
            if k is not None:
                grad_cos, grad_sin = (a + b for a, b in zip((grad_cos, grad_sin), _table_grads(k, grad_k, cos)))
        return dq, dk, grad_cos, grad_sin


def _table_grads(x: torch.Tensor, grad: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g1, g2 = grad.float().chunk(2, dim=-1)
    x1, x2 = x.float().chunk(2, dim=-1)
    return _sum_to(g1 * x1 + g2 * x2, table), _sum_to(g2 * x1 - g1 * x2, table)


def _sum_to(grad: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Sum a (b, h, n, k) gradient over the dimensions ``table`` was shared across, back to its shape and dtype."""
    if table.ndim == 2:
        grad = grad.sum((0, 1))
    elif table.ndim == 3:
        grad = grad.sum(1).sum_to_size(table.shape)
    else:
        grad = grad.sum_to_size(table.shape)
    return grad.to(table.dtype)


def apply_rotary_qk_triton(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                           sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)`` through the kernel, with autograd (q, k, and the
    tables when they need it). k may have fewer heads than q (grouped-query attention)."""
    return _RotaryFunction.apply(q, k, cos, sin)


def apply_rotary_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`mmrope.model.rope.apply_rotary` on one tensor as the Triton kernel, with autograd."""
    return _RotaryFunction.apply(x, None, cos, sin)[0]


def supports(x: torch.Tensor, cos: torch.Tensor) -> bool:
    """Whether the kernel computes exactly what the reference does for x and this table: a float16 / bfloat16 /
    float32 x (b, h, n, d) and a float32 (n, k), (b, n, k) or (b, h, n, k) table that broadcasts against it (the
    reference widens to float64 when any input is float64; the kernel never does)."""
    if x.dtype not in SUPPORTED_DTYPES or cos.dtype != torch.float32 or x.ndim != 4 or cos.ndim not in (2, 3, 4):
        return False
    b, h, n, d = x.shape
    table = _as_4d(cos.shape)
    return table[0] in (1, b) and table[1] in (1, h) and table[2] == n and 2 * table[3] == d
