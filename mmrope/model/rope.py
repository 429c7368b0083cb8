"""Rotary position embeddings: 1D, 2D and 3D axial, RoPE-Mixed, Golden Gate, M-RoPE and ComRoPE-LD.

Every variant but one answers one question, "by what angle does rotary pair k of this token turn?", and returns the
answer as a half table ``(cos, sin)`` of shape ``(..., seq, head_dim / 2)``. One function, :func:`apply_rotary`, turns
any such table into a rotation, so the variants differ only in how they build their angles. The exception is
ComRoPE-LD (:class:`ComRoPELDEmbedding`), whose rotation turns blocks of 8 channels at once, not pairs: it returns
the block rotations themselves, and :func:`apply_block_rotation` applies them.

Layout: rotate-half (GPT-NeoX / Llama / Qwen2-VL). Pair k couples channel k with channel k + head_dim/2::

    head_dim = 8, pairs k = 0..3, angles a_k
    x        = [x0, x1, x2, x3 | x4, x5, x6, x7]
    x'[k]    = x[k] * cos(a_k) - x[k + 4] * sin(a_k)          k = 0..3
    x'[k+4]  = x[k + 4] * cos(a_k) + x[k] * sin(a_k)
    e.g. a_0 = pi/2 sends (x0, x4) = (1, 0) to (0, 1).

The GPT-J layout (adjacent pairs) is the same maths under a fixed channel permutation; we never use it. Angles are
computed in float32 whatever the input dtype (bf16 cannot tell position 4096 from 4097), and the rotated result is
cast back to the input's dtype.

Einstein legend: b batch, h heads, n tokens, d head dim, k = d/2 rotary pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (b, h, n, d) by the half tables ``cos``/``sin`` of shape (n, k), (b, n, k) or (b, h, n, k).

    A (b, g, n, k) table with g < h heads, g dividing h, holds one table per key/value head (MHRoPE): query head j
    takes table j // (h / g), the group whose keys ``Attention`` repeats for it, and keys (g heads) take it as it is.
    """
    if cos.shape[-1] * 2 != x.shape[-1]:
        raise ValueError(f"rotary table has {cos.shape[-1]} pairs but head_dim is {x.shape[-1]}: expected head_dim / 2")
    if cos.ndim == 3:  # (b, n, k): the same angles for every head
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    elif cos.ndim == 4 and cos.shape[1] not in (1, x.shape[1]):  # a table per key/value head: repeat over each group
        if x.shape[1] % cos.shape[1]:
            raise ValueError(f"rotary table has {cos.shape[1]} heads but x has {x.shape[1]}: expected a divisor")
        cos, sin = (t.repeat_interleave(x.shape[1] // cos.shape[1], dim=1) for t in (cos, sin))
    x1, x2 = x.to(rotary_dtype(x.dtype, cos.dtype)).chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


def inverse_frequencies(num_pairs: int, theta: float, dim: int | None = None) -> torch.Tensor:
    """f_k = theta^(-2k / dim) for k < num_pairs: geometric, highest frequency first. ``dim`` defaults to 2 * pairs."""
    dim = 2 * num_pairs if dim is None else dim
    return theta ** (-torch.arange(0, 2 * num_pairs, 2, dtype=torch.float64) / dim)


def rotary_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32, or float64 when an input is float64 (for exact references); never lower."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _cos_sin(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return angles.cos(), angles.sin()


def _angles_from_axes(positions: torch.Tensor, axis_of_pair: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """angle[..., n, k] = positions[..., n, axis_of_pair[k]] * inv_freq[k], in float32. positions: (..., n, axes)."""
    dtype = rotary_dtype(positions.dtype, inv_freq.dtype)
    return positions.to(dtype).index_select(-1, axis_of_pair) * inv_freq.to(dtype)


def _check_head_dim(head_dim: int, multiple: int, what: str) -> None:
    if head_dim <= 0 or head_dim % multiple:
        raise ValueError(f"head_dim={head_dim} cannot be split for {what}: expected a positive multiple of {multiple}")


class _FixedFrequencies(nn.Module):
    """Holds ``inv_freq`` as a buffer that follows the module's device but never drops below float32: a model cast
    to bf16 keeps exact frequencies, and ``.double()`` gets float64 ones (exact references), both recomputed from
    the float64 values rather than rounded from the float32 buffer."""

    def _set_inv_freq(self, inv_freq64: torch.Tensor) -> None:
        self._inv_freq64 = inv_freq64
        self.register_buffer("inv_freq", inv_freq64.float(), persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.inv_freq = self._inv_freq64.to(self.inv_freq.device, rotary_dtype(self.inv_freq.dtype))
        return self


class RotaryEmbedding(_FixedFrequencies):
    """1D RoPE (Su et al. 2021). Positions (n,) or (b, n) -> tables (n, k) or (b, n, k)."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        _check_head_dim(head_dim, 2, "1D RoPE")
        self.head_dim, self.theta = head_dim, theta
        self._set_inv_freq(inverse_frequencies(head_dim // 2, theta))

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = rotary_dtype(positions.dtype, self.inv_freq.dtype)
        return _cos_sin(positions.to(dtype).unsqueeze(-1) * self.inv_freq.to(dtype))


class AxialRotaryEmbedding(_FixedFrequencies):
    """Axial RoPE (RoPE-ViT "Axial", Qwen2-VL's vision tower): each axis owns a contiguous section of the rotary
    pairs, and a section of n pairs turns with the geometric frequencies f_j = theta^(-j / n), j < n.

    2 axes (row, col): half of the pairs each, f_j = theta^(-4j / d). 3 axes (t, row, col), for clips: t gets a
    quarter of the pairs and row and col the rest in halves, Qwen2-VL's M-RoPE proportions ([4, 6, 6] of 16).
    Positions (..., n, axes) -> tables (..., n, k); q(p1)·k(p2) depends only on p1 - p2. RoPE-ViT uses theta = 100
    for images (a 14x14 grid never needs Llama's slow frequencies).
    """

    def __init__(self, head_dim: int, theta: float = 100.0, axes: int = 2):
        super().__init__()
        if axes == 2:
            _check_head_dim(head_dim, 4, "2D axial RoPE (half of the rotary pairs per axis)")
        elif axes == 3:
            _check_head_dim(head_dim, 8, "3D axial RoPE (a quarter of the rotary pairs for time, the rest split "
                            "between row and column)")
        else:
            raise ValueError(f"axial RoPE over {axes} axes: expected 2 (row, col) or 3 (t, row, col)")
        self.head_dim, self.theta, self.axes = head_dim, theta, axes
        pairs = head_dim // 2  # (row, col): halves; (t, row, col): Qwen2-VL's M-RoPE sections
        self.sections = [pairs // 2, pairs - pairs // 2] if axes == 2 else default_mrope_section(pairs)
        self._set_inv_freq(torch.cat([inverse_frequencies(n, theta) for n in self.sections]))
        axis = torch.repeat_interleave(torch.arange(axes), torch.tensor(self.sections))
        self.register_buffer("axis_of_pair", axis, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if positions.shape[-1] != self.axes:
            raise ValueError(f"axial RoPE over {self.axes} axes got positions of shape {tuple(positions.shape)}: "
                             f"expected (..., n, {self.axes})")
        return _cos_sin(_angles_from_axes(positions, self.axis_of_pair, self.inv_freq))


class MixedRotaryEmbedding(nn.Module):
    """RoPE-Mixed (Heo et al., ECCV 2024): learnable per-head frequency pairs, angle_k = row * fy_k + col * fx_k.

    Mixing both axes in every pair lets a head attend along diagonals. ``depth`` > 1 gives every layer its own
    frequencies (as the paper does); the tables of all layers are built in one go, once per forward.
    Positions (n, 2) or (b, n, 2) -> tables (depth, b or 1, heads, n, k); layer i uses ``cos[i]``.
    The parameter ``freqs`` is flagged ``no_weight_decay``: decaying it would pull every head towards NoPE.
    """

    def __init__(self, head_dim: int, num_heads: int, theta: float = 10.0, depth: int = 1, seed: int = 0):
        super().__init__()
        _check_head_dim(head_dim, 4, "RoPE-Mixed (pairs are initialised in axis-aligned couples)")
        self.head_dim, self.num_heads, self.depth = head_dim, num_heads, depth
        # Paper init: d/4 magnitudes theta^(-4j/d), each used at a random angle phi and at phi + pi/2 per head.
        mag = inverse_frequencies(head_dim // 4, theta, dim=head_dim // 2).float()  # (d/4,)
        g = torch.Generator().manual_seed(seed)
        phi = torch.rand(depth, num_heads, 1, generator=g) * 2 * math.pi
        fx = torch.cat((mag * torch.cos(phi), mag * torch.cos(phi + math.pi / 2)), dim=-1)  # (depth, heads, k)
        fy = torch.cat((mag * torch.sin(phi), mag * torch.sin(phi + math.pi / 2)), dim=-1)
        self.freqs = nn.Parameter(torch.stack((fy, fx), dim=1))  # (depth, 2, heads, k): row then col
        self.freqs.no_weight_decay = True

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = rotary_dtype(positions.dtype, self.freqs.dtype)
        pos = positions.to(dtype)
        if pos.ndim == 2:
            pos = pos.unsqueeze(0)  # (1, n, 2)
        row, col = pos[:, None, :, 0, None], pos[:, None, :, 1, None]  # (b, 1, n, 1)
        fy, fx = self.freqs.to(dtype)[:, :, None, :, None, :].unbind(1)  # (depth, 1, heads, 1, k)
        # elementwise, not einsum: autocast would run a matmul in bf16
        angles = row * fy + col * fx  # (depth, b, heads, n, k)
        return _cos_sin(angles)


# Golden Gate RoPE's spacing between consecutive directions, in radians: -pi/golden ratio. A pair turning along -u is
# the pair turning along u with its two channels swapped, so directions only matter modulo pi, and this is the golden
# angle of that half-turn (pi - pi/phi = pi/phi^2), which spreads any number of directions about evenly over it.
GOLDEN_SPACING = math.pi * (1 - math.sqrt(5)) / 2


def golden_gate_frequencies(num_heads: int, num_pairs: int, min_freq: float = 0.2, max_freq: float = 20.0,
                            spacing: float = GOLDEN_SPACING) -> torch.Tensor:
    """Golden Gate RoPE's frequency vectors (heads, k, 2) over (row, col), in float64.

    Pair k of head h turns with magnitude f_k = min_freq * (max_freq / min_freq)^(k / (k_total - 1)) (log-spaced,
    lowest first) along the direction phi = (h * k_total + k) * ``spacing``: the directions run on from head to head,
    so every head gets its own. The vector is f_k * (cos phi, sin phi), its first entry multiplying the row."""
    magnitude = min_freq * (max_freq / min_freq) ** torch.linspace(0, 1, num_pairs, dtype=torch.float64)  # (k,)
    phi = torch.arange(num_heads * num_pairs, dtype=torch.float64).view(num_heads, num_pairs) * spacing
    return magnitude[:, None] * torch.stack((phi.cos(), phi.sin()), dim=-1)


class GoldenGateRotaryEmbedding(_FixedFrequencies):
    """Golden Gate RoPE (Jerry Xiong, "On N-dimensional Rotary Positional Embeddings", 2025): fixed directions.

    Like RoPE-Mixed every pair turns along a direction of the plane, angle_k = row * fy_k + col * fx_k, but the
    directions are fixed and spread by :data:`GOLDEN_SPACING` (:func:`golden_gate_frequencies`), so no parameter is
    learned and a head still attends along diagonals. Positions (n, 2) or (b, n, 2) -> tables (b or 1, heads, n, k);
    q(p1)·k(p2) depends only on p1 - p2. ``inv_freq`` holds the frequency vectors (heads, k, 2).
    """

    def __init__(self, head_dim: int, num_heads: int, min_freq: float = 0.2, max_freq: float = 20.0):
        super().__init__()
        _check_head_dim(head_dim, 2, "Golden Gate RoPE")
        self.head_dim, self.num_heads, self.min_freq, self.max_freq = head_dim, num_heads, min_freq, max_freq
        self._set_inv_freq(golden_gate_frequencies(num_heads, head_dim // 2, min_freq, max_freq))

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = rotary_dtype(positions.dtype, self.inv_freq.dtype)
        pos = positions.to(dtype)
        if pos.ndim == 2:
            pos = pos.unsqueeze(0)  # (1, n, 2)
        row, col = pos[:, None, :, 0, None], pos[:, None, :, 1, None]  # (b, 1, n, 1)
        fy, fx = self.inv_freq.to(dtype)[:, None].unbind(-1)  # (heads, 1, k) each
        return _cos_sin(row * fy + col * fx)  # (b, heads, n, k); elementwise, so autocast keeps float32


class ComRoPELDEmbedding(nn.Module):
    """ComRoPE-LD (Yu et al., "ComRoPE: Scalable and Robust Rotary Position Embedding Parameterized by Trainable
    Commuting Angle Matrices", CVPR 2025, arXiv 2506.03737; the authors' ``ComRoPELDAttention``, Longin-Yu/ComRoPE).

    The channels of each head are cut into blocks of ``block_size`` (block j = channels j*b .. j*b + b - 1), and a
    token at position x turns block j by the b x b rotation

        R_j(x) = exp(sum_axis x_axis * A_axis,j),   A_axis,j = theta_axis,j * (P_j - P_jᵀ)    ("linearly dependent")

    with P_j (b x b, one per head) and theta_axis,j (one per axis, shared by the heads) learned in every layer. All
    angle matrices of a block are multiples of one skew-symmetric matrix, so they commute, R_j(x)ᵀ R_j(y) = R_j(y - x)
    and q(p1)·k(p2) depends only on p1 - p2 whatever the parameters (the paper's Theorem 1). Init as the authors':
    P ~ N(0, ``init_std``²), theta ~ N(0, 1), drawn from a generator of their own (``seed``, as RoPE-Mixed's
    directions) so that building the encoding leaves the global random stream, and with it the init of every other
    weight, as it is for the other arms. Both are flagged ``no_weight_decay``: decay would shrink the angle matrices
    towards 0, where R = I and the encoding is NoPE (the same reason as RoPE-Mixed's frequencies).

    Positions (n, axes) -> rotations (depth, heads, n, blocks, b, b), built once per forward with
    ``torch.matrix_exp`` as the authors do; layer i applies ``rotations[i]`` with :func:`apply_block_rotation`.
    """

    def __init__(self, head_dim: int, num_heads: int, depth: int = 1, block_size: int = 8, axes: int = 2,
                 init_std: float = 1.0, seed: int = 0):
        super().__init__()
        _check_head_dim(head_dim, block_size, f"ComRoPE-LD (rotation blocks of {block_size} channels)")
        self.head_dim, self.num_heads, self.depth, self.block_size = head_dim, num_heads, depth, block_size
        blocks = head_dim // block_size
        g = torch.Generator().manual_seed(seed)
        base = torch.randn(depth, num_heads, blocks, block_size, block_size, generator=g) * init_std
        self.base = nn.Parameter(base)  # P: (layer, head, block, b, b)
        self.scales = nn.Parameter(torch.randn(depth, axes, blocks, generator=g))  # theta: (layer, axis, block)
        self.base.no_weight_decay = self.scales.no_weight_decay = True

    def generators(self) -> torch.Tensor:
        """The skew-symmetric P - Pᵀ of every layer, head and block -> (depth, heads, blocks, b, b)."""
        return self.base - self.base.transpose(-1, -2)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        dtype = rotary_dtype(positions.dtype, self.base.dtype)
        with torch.autocast(positions.device.type, enabled=False):  # matrix_exp's products stay in float32
            pos = positions.to(dtype)[None, :, :, None]  # (1, n, axes, 1)
            turns = (pos * self.scales.to(dtype)[:, None]).sum(2)  # (depth, n, blocks): sum_axis theta * x
            generators = self.generators().to(dtype)[:, :, None]  # (depth, heads, 1, blocks, b, b)
            return torch.matrix_exp(turns[:, None, :, :, None, None] * generators)  # (depth, heads, n, blocks, b, b)


def apply_block_rotation(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Turn ``x`` (b, h, n, d) by block rotations (h, n, blocks, s, s) or (b, h, n, blocks, s, s): block j of the
    channels (j*s .. j*s + s - 1) is multiplied by ``rotation[..., j, :, :]``. Maths in float32, as in
    :func:`apply_rotary`."""
    blocks, size = rotation.shape[-3], rotation.shape[-1]
    if blocks * size != x.shape[-1]:
        raise ValueError(f"block rotation has {blocks} blocks of {size} channels but head_dim is {x.shape[-1]}")
    dtype = rotary_dtype(x.dtype, rotation.dtype)
    with torch.autocast(x.device.type, enabled=False):
        x_blocks = x.to(dtype).unflatten(-1, (blocks, size)).unsqueeze(-1)  # (b, h, n, blocks, s, 1)
        out = (rotation.to(dtype) @ x_blocks).squeeze(-1)
    return out.flatten(-2).to(x.dtype)


def apply_block_rotation_qk(q: torch.Tensor, k: torch.Tensor,
                            rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k through :func:`apply_block_rotation`: the rotary apply of an encoding whose rope is ``(rotation,)``."""
    return apply_block_rotation(q, rotation), apply_block_rotation(k, rotation)


def default_mrope_section(num_pairs: int, interleaved: bool = False) -> list[int]:
    """Qwen2-VL's proportions (1/4 t, 3/8 h, 3/8 w; [16, 24, 24] of 64 pairs), or a t, h, w cycle if interleaved."""
    if interleaved:
        h = w = num_pairs // 3
        return [num_pairs - h - w, h, w]
    t = num_pairs // 4
    h = (num_pairs - t) // 2
    return [t, h, num_pairs - t - h]


def check_mrope_section(section: Sequence[int], num_pairs: int, name: str = "mrope_section") -> list[int]:
    """``section`` as a list, or one line naming ``name`` when it is not three non-negative counts of rotary pairs
    (t, h, w) summing to ``num_pairs``."""
    section = list(section)
    if len(section) != 3 or any(s < 0 for s in section) or sum(section) != num_pairs:
        raise ValueError(f"{name}={section} does not split the rotary pairs: expected three non-negative counts "
                         f"(t, h, w) summing to head_dim / 2 = {num_pairs}")
    return section


def mrope_axis_of_pair(num_pairs: int, section: Sequence[int], interleaved: bool) -> torch.Tensor:
    """Which row of the (t, h, w) ids each pair reads. Chunked (Qwen2-VL): [t]*s_t + [h]*s_h + [w]*s_w, so t gets
    the highest frequencies. Interleaved (Qwen3-VL): pair k is h if k % 3 == 1 and k < 3 s_h, w if k % 3 == 2 and
    k < 3 s_w, else t, so every axis spans high and low frequencies."""
    s_t, s_h, s_w = section
    if not interleaved:
        return torch.repeat_interleave(torch.arange(3), torch.tensor([s_t, s_h, s_w]))
    k = torch.arange(num_pairs)
    axis = torch.zeros(num_pairs, dtype=torch.long)
    axis[(k % 3 == 1) & (k < 3 * s_h)] = 1
    axis[(k % 3 == 2) & (k < 3 * s_w)] = 2
    counts = torch.bincount(axis, minlength=3).tolist()
    if counts != list(section):
        raise ValueError(f"mrope_section={list(section)} cannot be interleaved over {num_pairs} pairs "
                         f"(the t, h, w cycle gives {counts}): expected h and w sections of at most {num_pairs // 3}")
    return axis


class MultimodalRotaryEmbedding(_FixedFrequencies):
    """M-RoPE (Qwen2-VL; interleaved as Qwen3-VL). Ids (3, b, n) = (t, h, w) rows -> tables (b, n, k).

    Pair k turns with f_k = theta^(-2k/d) times the row ``mrope_section`` assigns it. With t = h = w this is exactly
    1D RoPE, so text behaves as in a plain language model.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, mrope_section: Sequence[int] | None = None,
                 interleaved: bool = False):
        super().__init__()
        _check_head_dim(head_dim, 2, "M-RoPE")
        num_pairs = head_dim // 2
        section = (check_mrope_section(mrope_section, num_pairs) if mrope_section is not None
                   else default_mrope_section(num_pairs, interleaved))
        self.head_dim, self.theta, self.mrope_section, self.interleaved = head_dim, theta, section, interleaved
        self._set_inv_freq(inverse_frequencies(num_pairs, theta))
        self.register_buffer("axis_of_pair", mrope_axis_of_pair(num_pairs, section, interleaved), persistent=False)

    def angles(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Ids (3, b, n) -> the angle of every rotary pair (b, n, k), in float32 (float64 for float64 ids)."""
        if position_ids.ndim != 3 or position_ids.shape[0] != 3:
            raise ValueError(f"M-RoPE position ids have shape {tuple(position_ids.shape)}: expected (3, batch, seq)")
        return _angles_from_axes(position_ids.permute(1, 2, 0), self.axis_of_pair, self.inv_freq)  # (b, n, 3) ids

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _cos_sin(self.angles(position_ids))
