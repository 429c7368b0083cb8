"""The rotary maths, as properties: relative-position invariance, norms, identity at 0, exact reductions, parity."""

from types import SimpleNamespace

import pytest
import torch

from mmrope.model.rope import (
    AxialRotaryEmbedding,
    MixedRotaryEmbedding,
    MultimodalRotaryEmbedding,
    RotaryEmbedding,
    apply_rotary,
    default_mrope_section,
)

torch.manual_seed(0)


def qk_scores(rope, q, k, pos_q, pos_k):
    """q·k after rotating q at pos_q and k at pos_k; q, k: (heads, d)."""
    cq, sq = rope(pos_q)
    ck, sk = rope(pos_k)
    if cq.ndim == 5:  # Mixed: (depth, 1, heads, 1, k) -> layer 0
        cq, sq, ck, sk = cq[0], sq[0], ck[0], sk[0]
    rq = apply_rotary(q[None, :, None].double(), cq, sq)
    rk = apply_rotary(k[None, :, None].double(), ck, sk)
    return (rq * rk).sum(-1).flatten()


def variants(head_dim=16, heads=2):
    return {
        "rope1d": (RotaryEmbedding(head_dim).double(), lambda: torch.randint(0, 50, (1,))),
        "rope2d": (AxialRotaryEmbedding(head_dim).double(), lambda: torch.randint(0, 50, (1, 2))),
        "mixed": (MixedRotaryEmbedding(head_dim, heads).double(), lambda: torch.randint(0, 50, (1, 2))),
        "mrope": (MultimodalRotaryEmbedding(head_dim).double(), lambda: torch.randint(0, 50, (3, 1, 1))),
        "mrope_interleaved": (MultimodalRotaryEmbedding(head_dim, interleaved=True).double(),
                              lambda: torch.randint(0, 50, (3, 1, 1))),
    }


@pytest.mark.parametrize("name", list(variants()))
def test_score_depends_only_on_offset(name):
    rope, sample = variants()[name]
    q, k = torch.randn(2, 16, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    for _ in range(10):
        pq, pk, shift = sample(), sample(), sample()
        torch.testing.assert_close(qk_scores(rope, q, k, pq, pk), qk_scores(rope, q, k, pq + shift, pk + shift))


@pytest.mark.parametrize("name", list(variants()))
def test_score_changes_with_offset(name):
    """The property above would also hold for an encoding that ignores position: check it does not."""
    rope, sample = variants()[name]
    q = torch.randn(2, 16, dtype=torch.float64)
    p = sample()
    assert not torch.allclose(qk_scores(rope, q, q, p, p), qk_scores(rope, q, q, p, p + 3))


@pytest.mark.parametrize("name", list(variants()))
def test_rotation_preserves_norm_and_position_zero_is_identity(name):
    rope, sample = variants()[name]
    x = torch.randn(1, 2, 1, 16, dtype=torch.float64)
    cos, sin = rope(sample())
    if cos.ndim == 5:
        cos, sin = cos[0], sin[0]
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    cos0, sin0 = rope(sample() * 0)
    if cos0.ndim == 5:
        cos0, sin0 = cos0[0], sin0[0]
    torch.testing.assert_close(apply_rotary(x, cos0, sin0), x)


def test_axial_rows_and_columns_use_separate_pairs():
    rope = AxialRotaryEmbedding(16).double()
    cos_row, _ = rope(torch.tensor([[3, 0]]))
    cos_col, _ = rope(torch.tensor([[0, 3]]))
    assert torch.all(cos_row[0, 4:] == 1) and torch.all(cos_row[0, :4] != 1)  # first half of the pairs: row
    assert torch.all(cos_col[0, :4] == 1) and torch.all(cos_col[0, 4:] != 1)  # second half: column


@pytest.mark.parametrize("interleaved", [False, True])
def test_mrope_with_equal_rows_is_1d_rope(interleaved):
    pos = torch.randint(0, 5000, (2, 7))
    cos1, sin1 = RotaryEmbedding(64)(pos)
    cosm, sinm = MultimodalRotaryEmbedding(64, interleaved=interleaved)(pos.expand(3, -1, -1))
    assert torch.equal(cos1, cosm) and torch.equal(sin1, sinm)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[a, b] -> [-b, a]: the partner of each channel in the rotate-half layout, as Hugging Face's Llama writes it."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def test_apply_matches_rotate_half_formula():
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    cos, sin = RotaryEmbedding(8).double()(torch.arange(5))
    full_cos, full_sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
    torch.testing.assert_close(apply_rotary(x, cos, sin), x * full_cos + rotate_half(x) * full_sin)


def test_worked_example_float64():
    rope = MultimodalRotaryEmbedding(8, theta=10000.0, mrope_section=[2, 1, 1]).double()
    cos, sin = rope(torch.tensor([4, 5, 6], dtype=torch.float64).view(3, 1, 1))
    x = torch.arange(1, 9, dtype=torch.float64).view(1, 1, 1, 8)
    expected = [3.1303688556760294, -0.4943880658461328, 2.646396596290151, 3.9519282882154814,
                -4.025020599625988, 6.305202648634611, 7.141189330576799, 8.02385585643226]
    torch.testing.assert_close(apply_rotary(x, cos, sin).flatten(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("rope_type", ["rope1d", "mrope"])
def test_bf16_inputs_keep_fp32_angles_at_large_positions(rope_type):
    rope = RotaryEmbedding(64) if rope_type == "rope1d" else MultimodalRotaryEmbedding(64)
    pos = torch.arange(4096, 4160)
    ids = pos if rope_type == "rope1d" else pos.view(1, 1, -1).expand(3, 1, -1)
    cos, sin = rope(ids)
    assert cos.dtype == torch.float32
    x = torch.randn(1, 2, 64, 64, dtype=torch.float64)
    ref = apply_rotary(x, *RotaryEmbedding(64).double()(pos.double()))
    out = apply_rotary(x.bfloat16(), cos, sin)
    assert out.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits of the *result*; bf16 angles (pos 4096 -> spacing 32) would be far off
    assert (out.double() - ref).abs().max() < 0.05 * x.abs().max()


def test_autocast_keeps_tables_fp32():
    rope = MixedRotaryEmbedding(16, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos, _ = rope(torch.randint(0, 1000, (10, 2)))
    assert cos.dtype == torch.float32


def test_mixed_frequencies_are_learnable_and_flagged_for_no_weight_decay():
    rope = MixedRotaryEmbedding(16, num_heads=3, depth=2)
    assert rope.freqs.shape == (2, 2, 3, 8) and rope.freqs.no_weight_decay
    x = torch.randn(1, 3, 4, 16)
    cos, sin = rope(torch.randint(0, 8, (4, 2)))
    apply_rotary(x, cos[1], sin[1]).sum().backward()
    assert rope.freqs.grad is not None and rope.freqs.grad[1].abs().sum() > 0 and rope.freqs.grad[0].abs().sum() == 0


def test_default_sections_follow_qwen2_vl_proportions():
    assert default_mrope_section(64) == [16, 24, 24]
    assert sum(default_mrope_section(6)) == 6
    assert default_mrope_section(64, interleaved=True) == [22, 21, 21]
    assert AxialRotaryEmbedding(128, axes=3).sections == [16, 24, 24]  # the encoder's 3D RoPE: the same proportions


@pytest.mark.parametrize("make, match", [
    (lambda: AxialRotaryEmbedding(18), "head_dim=18"),
    (lambda: MixedRotaryEmbedding(6, 2), "head_dim=6"),
    (lambda: RotaryEmbedding(7), "head_dim=7"),
    (lambda: MultimodalRotaryEmbedding(16, mrope_section=[2, 2, 2]), r"mrope_section=\[2, 2, 2\]"),
    (lambda: MultimodalRotaryEmbedding(16, mrope_section=[1, 7]), r"mrope_section=\[1, 7\]"),
    (lambda: MultimodalRotaryEmbedding(16, mrope_section=[0, 4, 4], interleaved=True), "interleaved"),
])
def test_bad_arguments_raise_one_line_errors(make, match):
    with pytest.raises(ValueError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


def test_apply_rejects_mismatched_table():
    with pytest.raises(ValueError, match="head_dim"):
        apply_rotary(torch.randn(1, 1, 2, 8), *RotaryEmbedding(16)(torch.arange(2)))


def _hf_config(head_dim, section):
    return SimpleNamespace(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
                           max_position_embeddings=4096, head_dim=head_dim, hidden_size=head_dim * 2,
                           num_attention_heads=2)


@pytest.mark.parametrize("family, section", [("qwen2_vl", [16, 24, 24]), ("qwen2_vl", [4, 6, 6]),
                                             ("qwen3_vl", [24, 20, 20])])
def test_matches_transformers_multimodal_rotary(family, section):
    pytest.importorskip("transformers")
    if family == "qwen2_vl":
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding as HFRope
        from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb as hf_apply
    else:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding as HFRope
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb as hf_apply
    head_dim = 2 * sum(section)
    ids = torch.randint(0, 300, (3, 2, 11))
    q, k = torch.randn(2, 4, 11, head_dim), torch.randn(2, 4, 11, head_dim)
    hf_cos, hf_sin = HFRope(_hf_config(head_dim, section))(q, ids)
    hq, hk = hf_apply(q, k, hf_cos, hf_sin)
    ours = MultimodalRotaryEmbedding(head_dim, mrope_section=section, interleaved=family == "qwen3_vl")
    cos, sin = ours(ids)
    # both fp32; they differ only in how inv_freq is rounded (ours from float64), ~1e-5 rad at position 300
    torch.testing.assert_close(apply_rotary(q, cos, sin), hq, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(apply_rotary(k, cos, sin), hk, rtol=1e-4, atol=1e-4)
