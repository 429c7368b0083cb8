"""RoPE apply on q and k against the copy bound: ours eager, ours compiled, transformers' Qwen2-VL eager path.

    pip install -e ".[bench]" && python benchmarks/bench_rope_apply.py [--batch 8 --heads 8 --seq 1024 --head-dim 64]

The copy bound is ``q.clone(); k.clone()`` (forward) and the same for q, k and their two gradients (forward +
backward): a rotation must at least read and write every element once. Every figure is a median measured side by
side with the copy in one run, and is printed as a multiple of that copy.

Contenders, each rotating q and k of shape (b, h, n, d) in float32:

    eager              mmrope.model.rope.apply_rotary on prebuilt half tables (n, k) or (b, n, k)
    compiled           mmrope.model.rotary_apply.apply_rotary_fast: the same function under torch.compile
    eager + table      the table built from positions (our rope module's forward), then eager apply
    hf                 transformers' apply_rotary_pos_emb (Llama / Qwen2-VL text) on prebuilt full-width tables
                       (b, n, d); for 2D, our axial table duplicated to full width (transformers has no 2D layout
                       for (b, h, n, d))
    hf + table         Qwen2VLRotaryEmbedding builds the full-width tables from (3, b, n) ids, then the apply
                       (1D: the same id on all three rows, which is how Qwen2-VL rotates text; M-RoPE: (t, h, w))

Every contender is called once before the timed rounds, so compile time is not in the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, rotation_calls, time_side_by_side

from mmrope.model.position_ids import grid_positions
from mmrope.model.rope import (
    AxialRotaryEmbedding,
    MultimodalRotaryEmbedding,
    RotaryEmbedding,
    apply_rotary,
    default_mrope_section,
)
from mmrope.model.rotary_apply import apply_rotary_fast


def hf_modules(head_dim: int, section: list[int]):
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding, apply_rotary_pos_emb

    config = SimpleNamespace(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
                             max_position_embeddings=4096, head_dim=head_dim, hidden_size=head_dim * 2,
                             num_attention_heads=2)
    return Qwen2VLRotaryEmbedding(config), apply_rotary_pos_emb


def variants(b: int, n: int, d: int):
    """name -> (our rope module, its positions, the (3, b, n) ids transformers' M-RoPE table reads, or None)."""
    text = torch.arange(n).expand(b, n)
    side = int(n**0.5)
    mrope_ids = torch.randint(0, n, (3, b, n))
    return {
        "1D": (RotaryEmbedding(d), torch.arange(n), text.expand(3, b, n)),
        "2D axial": (AxialRotaryEmbedding(d), grid_positions(side, n // side, 1), None),
        "M-RoPE": (MultimodalRotaryEmbedding(d), mrope_ids, mrope_ids),
    }


def rotate_both(q, k, cos, sin):
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def contenders(rope, positions, hf_ids, q, k, backward: bool):
    """name -> a call that rotates q and k (and, with ``backward``, back-propagates given gradients)."""
    section = getattr(rope, "mrope_section", default_mrope_section(q.shape[-1] // 2))
    hf_rope, hf_apply = hf_modules(q.shape[-1], section)
    cos, sin = rope(positions)
    full_cos, full_sin = torch.cat((cos, cos), -1).expand(q.shape[0], -1, -1), torch.cat((sin, sin), -1).expand(
        q.shape[0], -1, -1)
    q, k, copy, run = rotation_calls(q, k, backward)

    fns = {
        "copy (bound)": copy,
        "eager": run(lambda: (apply_rotary(q, cos, sin), apply_rotary(k, cos, sin))),
        "compiled": run(lambda: (apply_rotary_fast(q, cos, sin), apply_rotary_fast(k, cos, sin))),
        "eager + table": run(lambda: rotate_both(q, k, *rope(positions))),
        "hf": run(lambda: hf_apply(q, k, full_cos, full_sin)),
    }
    if hf_ids is not None:
        fns["hf + table"] = run(lambda: hf_apply(q, k, *hf_rope(q, hf_ids)))
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    torch.manual_seed(0)
    b, h, n, d = args.batch, args.heads, args.seq, args.head_dim
    print(f"RoPE apply on q and k, (b, h, n, d) = ({b}, {h}, {n}, {d}), float32, CPU, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}, transformers {transformers.__version__}")
    print("each cell: median time as a multiple of the copy bound measured in the same run (ms in brackets)\n")
    for backward in (False, True):
        rows, names = [], ["eager", "compiled", "eager + table", "hf", "hf + table"]
        for variant, (rope, positions, hf_ids) in variants(b, n, d).items():
            q, k = torch.randn(b, h, n, d), torch.randn(b, h, n, d)
            fns = contenders(rope, positions, hf_ids, q, k, backward)
            for fn in fns.values():  # compile outside the timed rounds
                fn()
            times = time_side_by_side(fns, rounds=args.rounds, repeats=args.repeats)
            bound = times["copy (bound)"]
            rows.append([variant, f"{bound * 1e3:.2f}"] + [
                f"{times[name] / bound:.2f}x ({times[name] * 1e3:.1f})" if name in times else "—" for name in names])
        print(f"**{'forward + backward' if backward else 'forward'}**\n")
        print(markdown_table(["RoPE", "copy ms"] + names, rows))
        print()


if __name__ == "__main__":
    main()
