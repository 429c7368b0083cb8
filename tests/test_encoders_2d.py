"""The encoder arms whose rotary pairs turn along directions other than rows and columns: Golden Gate RoPE (fixed
directions) and ComRoPE-LD (learned commuting angle matrices, 8 x 8 block rotations). Their maths as properties
(relative positions, norms, identity at 0), worked examples of their rules against the sources, and the seam that
lets block rotations through the encoder without changing the other encoders."""

import copy
import math

import pytest
import torch

from mmrope.model.captioner import Captioner
from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.model.pos_encodings import ENCODERS
from mmrope.model.pos_encodings.mixed_axes import golden_gate_coordinates
from mmrope.model.position_ids import patch_positions
from mmrope.model.rope import (
    GOLDEN_SPACING,
    ComRoPELDEmbedding,
    GoldenGateRotaryEmbedding,
    apply_block_rotation,
    apply_block_rotation_qk,
    apply_rotary,
    golden_gate_frequencies,
)
from mmrope.model.rotary_apply import reference
from mmrope.model.vision import VisionEncoder
from mmrope.train.optim import parameter_groups

F64 = torch.float64


def golden(head_dim=16, heads=2):
    return GoldenGateRotaryEmbedding(head_dim, heads).double()


def comrope(head_dim=16, heads=2, seed=1):
    """ComRoPE-LD with random parameters, as its init draws them."""
    return ComRoPELDEmbedding(head_dim, heads, depth=1, seed=seed).double()


ROPES = {"golden": golden, "comrope": comrope}


def rotate(rope, x, positions):
    """x (1, heads, n, d) turned at ``positions`` (n, 2) by either module, layer 0 for ComRoPE-LD."""
    if isinstance(rope, ComRoPELDEmbedding):
        return apply_block_rotation(x, rope(positions)[0])
    return apply_rotary(x, *rope(positions))


def score(rope, q, k, pq, pk):
    """q·k per head (heads,) after turning q (heads, d) at pq (2,) and k at pk."""
    rq = rotate(rope, q[None, :, None], pq[None])
    rk = rotate(rope, k[None, :, None], pk[None])
    return (rq * rk).sum(-1).flatten()


@pytest.mark.parametrize("name", list(ROPES))
def test_score_depends_only_on_offset(name):
    rope = ROPES[name]()
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 2, 16, generator=g, dtype=F64)
    for _ in range(10):
        pq, pk, shift = (torch.rand(2, generator=g, dtype=F64) * 6 - 3 for _ in range(3))
        torch.testing.assert_close(score(rope, q, k, pq, pk), score(rope, q, k, pq + shift, pk + shift))
    # ... and it is not the trivial encoding that ignores position
    p = torch.tensor([0.2, 0.4], dtype=F64)
    assert not torch.allclose(score(rope, q, q, p, p), score(rope, q, q, p, p + 0.7))


@pytest.mark.parametrize("name", list(ROPES))
def test_rotation_preserves_norm_and_position_zero_is_identity(name):
    rope = ROPES[name]()
    x = torch.randn(1, 2, 3, 16, dtype=F64)
    positions = torch.tensor([[1.5, -2.0], [0.3, 0.9], [-4.0, 7.0]], dtype=F64)
    torch.testing.assert_close(rotate(rope, x, positions).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotate(rope, x, torch.zeros(3, 2, dtype=F64)), x)


def test_golden_gate_directions_and_magnitudes_worked_example():
    """head_dim 8 (4 pairs), 2 heads: magnitudes 0.2 * 100^(k/3), directions (h * 4 + k) * pi (1 - sqrt 5) / 2,
    vectors over (row, col) = magnitude * (cos phi, sin phi), as the source's UniformRoPE builds them."""
    assert GOLDEN_SPACING == pytest.approx(-1.9416110387)  # -pi / golden ratio
    freqs = golden_gate_frequencies(num_heads=2, num_pairs=4)
    torch.testing.assert_close(freqs.norm(dim=-1), torch.tensor([[0.2, 0.9283178, 4.3088694, 20.0]] * 2, dtype=F64))
    expected = [[[0.2, 0.0], [-0.3363990, -0.8652223], [-3.1772262, 2.9105995], [17.9356564, 8.8494196]],
                [[0.0174851, -0.1992342], [-0.8913193, 0.2594683], [2.6216836, 3.4195220], [10.3835733, -17.0933146]]]
    torch.testing.assert_close(freqs, torch.tensor(expected, dtype=F64), atol=1e-6, rtol=0)
    # consecutive directions (on through the heads) differ by the golden angle of the half-turn, pi / phi^2
    phi = torch.atan2(freqs[..., 1], freqs[..., 0]).flatten()
    torch.testing.assert_close(phi.diff() % math.pi, torch.full((7,), math.pi * (3 - math.sqrt(5)) / 2, dtype=F64))
    # the plug-in holds exactly these, for its config's heads and head_dim
    plugin = ENCODERS["rope2d_golden"](VisionConfig(dim=16, num_heads=2, depth=1, pos_encoding="rope2d_golden"))
    torch.testing.assert_close(plugin.rope.inv_freq, freqs.float())


def test_golden_gate_coordinates_and_angles_worked_example():
    """A 2 x 4 grid spans rows +-sqrt(2/4) and columns +-sqrt(4/2), ends included; pair k of head h turns by
    f_k (y cos phi + x sin phi)."""
    grid = (1, 2, 4)
    ids = patch_positions(*grid)  # raster order with merge 1
    coords = golden_gate_coordinates(ids, grid)
    s, t = math.sqrt(0.5), math.sqrt(2)
    expected = [[-s, -t], [-s, -t / 3], [-s, t / 3], [-s, t], [s, -t], [s, -t / 3], [s, t / 3], [s, t]]
    torch.testing.assert_close(coords, torch.tensor(expected))
    plugin = ENCODERS["rope2d_golden"](VisionConfig(dim=16, num_heads=2, depth=2, pos_encoding="rope2d_golden"))
    tables = plugin.rotary(ids, grid)
    assert len(tables) == 2 and tables[0] is tables[1]  # fixed: every block the same tables
    cos, sin = tables[0]
    assert cos.shape == (1, 2, 8, 4) and cos.dtype == torch.float32  # (1, heads, n, pairs)
    freqs = golden_gate_frequencies(2, 4)
    for head, patch, pair in ((0, 0, 3), (1, 6, 2), (1, 3, 1)):
        y, x = expected[patch]
        angle = y * freqs[head, pair, 0] + x * freqs[head, pair, 1]
        assert float(cos[0, head, patch, pair]) == pytest.approx(math.cos(angle), abs=1e-5)
        assert float(sin[0, head, patch, pair]) == pytest.approx(math.sin(angle), abs=1e-5)


def qk_map(encoding: str, head: int, grid: int = 9) -> torch.Tensor:
    """q·k / d of the centre patch against every patch of a grid x grid image (q = k = ones, so only position
    speaks), indexed by (Δrow, Δcol) + centre, for one head of a fresh encoder plug-in with head_dim 16."""
    plugin = ENCODERS[encoding](VisionConfig(dim=32, num_heads=2, depth=1, pos_encoding=encoding))
    cos, sin = plugin.rotary(patch_positions(1, grid, grid), (1, grid, grid))[0]
    if cos.ndim == 4:  # (1, heads, n, k): per-head directions
        cos, sin = cos[0, head], sin[0, head]
    rotated = apply_rotary(torch.ones(1, 1, grid * grid, 16), cos, sin)[0, 0]
    centre = (grid // 2) * grid + grid // 2
    return ((rotated[centre] * rotated).sum(-1) / 16).view(grid, grid)


@pytest.mark.parametrize("head", [0, 1])
def test_golden_gate_head_attends_along_diagonals_where_rope2d_cannot(head):
    """rope2d's map is a row part plus a column part, f(Δrow) + g(Δcol): its mixed difference is 0 and it cannot
    tell a diagonal from the anti-diagonal. Golden Gate's is not separable and tells them apart."""
    c = 4  # the centre of a 9 x 9 grid
    for encoding, mixes in (("rope2d", False), ("rope2d_golden", True)):
        m = qk_map(encoding, head)
        mixed = m - m[:, c:c + 1] - m[c:c + 1, :] + m[c, c]  # 0 everywhere iff m = f(Δrow) + g(Δcol)
        diagonals = float(m[c + 1, c + 1] - m[c + 1, c - 1])  # (1, 1) against (1, -1)
        assert (mixed.abs().max() > 0.5) == mixes and (abs(diagonals) > 0.05) == mixes, encoding


def test_comrope_ld_is_the_papers_block_matrix_exponential():
    """The authors' rule written out densely: block j of a head turns by exp(sum_axis x_axis theta_axis,j (P_j -
    P_jᵀ)), the head's rotation is block-diagonal over channels j*8 .. j*8 + 7, and the angle matrices commute."""
    rope = ComRoPELDEmbedding(head_dim=16, num_heads=2, depth=2).double()
    positions = torch.tensor([[0.3, -1.2], [2.0, 0.5]], dtype=F64)
    rotations = rope(positions)
    assert rotations.shape == (2, 2, 2, 2, 8, 8)  # (depth, heads, n, blocks, 8, 8)
    x = torch.randn(1, 2, 2, 16, dtype=F64)
    for layer in range(2):
        out = apply_block_rotation(x, rotations[layer])
        for head in range(2):
            skew = [p - p.T for p in rope.base[layer, head].detach()]  # P_j - P_jᵀ, j = 0, 1
            angle = [torch.block_diag(*[rope.scales[layer, axis, j].detach() * skew[j] for j in range(2)])
                     for axis in range(2)]  # A_row, A_col: (16, 16)
            torch.testing.assert_close(angle[0] @ angle[1], angle[1] @ angle[0])
            for token in range(2):
                generator = positions[token, 0] * angle[0] + positions[token, 1] * angle[1]
                expected = torch.linalg.matrix_exp(generator) @ x[0, head, token]
                torch.testing.assert_close(out[0, head, token], expected)


def test_comrope_ld_plugin_turns_patch_centres_scaled_to_the_unit_square():
    config = VisionConfig(dim=32, num_heads=2, depth=2, pos_encoding="comrope_ld")
    plugin = ENCODERS["comrope_ld"](config)
    ids, grid = patch_positions(1, 4, 6, merge=2), (1, 4, 6)
    centres = torch.stack(((ids[:, 1] + 0.5) / 4, (ids[:, 2] + 0.5) / 6), dim=-1)
    expected = plugin.rope(centres)
    tables = plugin.rotary(ids, grid)
    assert len(tables) == 2 and all(len(t) == 1 for t in tables)  # one (rotation,) per block, every layer its own
    for layer, (rotation,) in enumerate(tables):
        assert rotation.shape == (2, 24, 2, 8, 8)
        torch.testing.assert_close(rotation, expected[layer])


@pytest.mark.parametrize("encoding, dim, match", [
    ("comrope_ld", 24, r"vision.head_dim=12 .*'comrope_ld': expected a multiple of 8 \(channels rotate in blocks"),
    ("rope2d_golden", 30, r"vision.head_dim=15 .*'rope2d_golden': expected a multiple of 2"),
])
def test_config_rejects_a_head_dim_the_encoding_cannot_split(encoding, dim, match):
    with pytest.raises(ValueError, match=match):
        VisionConfig(dim=dim, num_heads=2, pos_encoding=encoding)


def test_only_comrope_ld_replaces_the_builds_rotary_apply():
    """The seam: an encoding names its apply; every (cos, sin) encoding keeps the one the build chose, so their
    numbers cannot change."""
    for encoding in ENCODERS:
        config = VisionConfig(image_size=32, dim=32, depth=1, num_heads=2, pos_encoding=encoding,
                              temporal_patch_size=2 if encoding == "rope3d" else 1)
        applies = {block.attn.rotary for block in VisionEncoder(config, out_dim=16, rotary=reference).blocks}
        assert applies == {apply_block_rotation_qk if encoding == "comrope_ld" else reference}, encoding


def tiny(encoding: str, depth: int = 2) -> Captioner:
    torch.manual_seed(0)
    vision = VisionConfig(image_size=32, dim=32, depth=depth, num_heads=2, pos_encoding=encoding)
    return Captioner(CaptionerConfig(vision, TextConfig(vocab_size=16, dim=32, depth=1, num_heads=2, num_kv_heads=1)))


@pytest.mark.parametrize("encoding", ["rope2d_golden", "comrope_ld"])
def test_encoder_ignores_a_constant_position_shift(encoding):
    """Through the real attention path: shifting every patch's (row, col) id leaves the encoder's output unchanged."""
    vision = tiny(encoding).vision.eval()
    pixels = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(vision.forward_features(pixels, position_offset=(3, 5)),
                                   vision.forward_features(pixels), atol=1e-4, rtol=1e-4)


def test_comrope_ld_learns_without_weight_decay_and_stays_relative():
    model = tiny("comrope_ld")
    rope = model.vision.positions.rope
    params = (rope.base, rope.scales)
    assert all(p.no_weight_decay for p in params)
    groups = parameter_groups(model, weight_decay=0.05)
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[1]["weight_decay"] == 0 and all(id(p) in no_decay for p in params)
    optimizer = torch.optim.AdamW(groups, lr=0.05)
    before = [p.detach().clone() for p in params]
    images = [torch.randn(3, 32, 48), torch.randn(3, 48, 32)]
    input_ids = torch.tensor([[3] + [5] * 6 + [4, 10, 11], [3] + [5] * 6 + [4, 12, 2]])
    for _ in range(3):
        optimizer.zero_grad()
        model(images, input_ids, labels=input_ids).loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        optimizer.step()
    assert all((p.detach() - b).abs().max() > 0.05 for p, b in zip(params, before))
    # the learned angle matrices still commute: exact relative positions, in float64 and through the encoder
    trained = copy.deepcopy(rope).double()
    q, k = torch.randn(2, 2, 16, dtype=F64)
    for shift in (torch.tensor([0.25, -0.5], dtype=F64), torch.tensor([3.0, 1.5], dtype=F64)):
        pq, pk = torch.tensor([0.1, 0.7], dtype=F64), torch.tensor([0.9, 0.2], dtype=F64)
        torch.testing.assert_close(score(trained, q, k, pq, pk), score(trained, q, k, pq + shift, pk + shift))
    test_vision = model.vision.eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(test_vision.forward_features(pixels, position_offset=(2, 7)),
                                   test_vision.forward_features(pixels), atol=1e-4, rtol=1e-4)


def test_block_rotation_maths_stays_float32_under_autocast():
    rope = ComRoPELDEmbedding(head_dim=16, num_heads=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rotation = rope(torch.rand(5, 2))[0]
        out = apply_block_rotation(torch.randn(1, 2, 5, 16, dtype=torch.bfloat16), rotation)
    assert rotation.dtype == torch.float32 and out.dtype == torch.bfloat16


def test_comrope_ld_init_leaves_the_global_random_stream_alone():
    """Its P and theta come from their own generator, so for one seed every other weight of the model starts as it
    does under any other encoding: the arms differ only by their positions."""
    torch.manual_seed(0)
    ComRoPELDEmbedding(head_dim=16, num_heads=2, depth=2)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))
    a, b = ComRoPELDEmbedding(16, 2, seed=0), ComRoPELDEmbedding(16, 2, seed=1)
    assert torch.equal(a.base, ComRoPELDEmbedding(16, 2, seed=0).base) and not torch.equal(a.base, b.base)
    assert float(a.base.detach().std()) == pytest.approx(1.0, abs=0.3)  # N(0, 1)
    assert a.scales.shape == (1, 2, 2)  # (layer, axis, block)
