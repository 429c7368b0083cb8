"""RoPE apply on a GPU: our Triton kernel against the memory bound, transformers' Qwen2-VL path and torch.compile.

    python benchmarks/bench_rope_gpu.py [--shape 8 16 4096 128] [--rounds 5]

Every contender rotates q and k of shape (b, h, n, d) by prebuilt tables; forward, and forward + backward (the
gradients of q and k). Columns:

    copy               q.clone(), k.clone() (and the two gradients, for forward + backward): the memory bound
    triton             mmrope.model.triton_rope.apply_rotary_qk_triton, the CUDA default: q and k through the kernel
                       in one autograd node (each read once, each result written once)
    triton apart       the same kernel through apply_rotary_triton, called on q and then on k (two autograd nodes)
    compiled q+k static  our apply_rotary on q and k in one graph compiled for fixed shapes
    eager              our readable apply_rotary
    hf eager           transformers' Qwen2-VL M-RoPE apply on its own prebuilt tables (the Llama rotate-half apply on
                       (b, n, d) tables in transformers 5; apply_multimodal_rotary_pos_emb on (3, b, n, d) tables,
                       picking the sections at every call, where the installed transformers has it)
    hf compiled        torch.compile of that same hf apply
    hf eager + table   Qwen2VLRotaryEmbedding building its tables from the (3, b, n) ids, then the hf apply

Rows: M-RoPE (a (b, n, k) table, as the decoder uses) and 1D / 2D (one (n, k) table shared by the batch, as the
encoder uses), in float32 and bfloat16. "GB/s" is the fewest bytes the rotation must move (read q and k, write
them, read the two tables once) over the triton time, and "% of copy" sets it against a large device-to-device copy
measured in the same run (bytes read plus written), the card's practical memory bandwidth.

A last table sweeps the kernel's launch settings (tile size and warps: the keywords of
``mmrope.model.triton_rope.rotate``) on every row, forward, to show how far the defaults are from the best. Every time
is one call between two CUDA events, so a contender's host-side work before its first kernel counts too.

Before timing, the kernel is checked against the eager path and a float64 reference: max |error| / max |reference|
for the output and the gradient of q. ``--device cpu`` with ``TRITON_INTERPRET=1`` runs the whole script on a
CPU at a small shape, to check the script itself.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, rotation_calls, time_call, time_cuda, time_side_by_side

from mmrope import triton_rope
from mmrope.model.rope import MultimodalRotaryEmbedding, RotaryEmbedding, apply_rotary, default_mrope_section
from mmrope.model.triton_rope import apply_rotary_qk_triton, apply_rotary_triton

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def hf_mrope(head_dim: int, section: list[int], device):
    """transformers' Qwen2-VL rotary module and the apply that goes with its tables, whichever version is installed."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl as hf

    config = SimpleNamespace(
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
        rope_scaling={"rope_type": "default", "type": "mrope", "mrope_section": section}, rope_theta=10000.0,
        partial_rotary_factor=1.0, max_position_embeddings=32768, head_dim=head_dim, hidden_size=head_dim * 2,
        num_attention_heads=2)
    rope = hf.Qwen2VLRotaryEmbedding(config).to(device)
    if hasattr(hf, "apply_multimodal_rotary_pos_emb"):  # transformers 4.x: sections picked inside every apply
        return rope, functools.partial(hf.apply_multimodal_rotary_pos_emb, mrope_section=section)
    return rope, hf.apply_rotary_pos_emb


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).abs().max() / ref.abs().max())


def check_exact(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> dict[str, float]:
    """Errors of the kernel's output and input gradient against the eager path and against float64."""
    grad = torch.randn_like(q)
    results = {}
    triton = lambda x, c, s: apply_rotary_qk_triton(x, x, c, s)[0]  # noqa: E731  (k's output is checked in tests)
    for name, fn, x, c, s in (("triton", triton, q, cos, sin), ("eager", apply_rotary, q, cos, sin),
                              ("fp64", apply_rotary, q.double(), cos.double(), sin.double())):
        x = x.detach().clone().requires_grad_()
        out = fn(x, c, s)
        (dx,) = torch.autograd.grad(out, x, grad.to(out.dtype))
        results[name] = (out, dx)
    errors = {}
    for ref in ("eager", "fp64"):
        errors[f"out vs {ref}"] = relative_error(results["triton"][0], results[ref][0])
        errors[f"dq vs {ref}"] = relative_error(results["triton"][1], results[ref][1])
    return errors


def contenders(q, k, tables, hf, backward: bool):
    """name -> a call that rotates q and k (and, with ``backward``, back-propagates given gradients). ``hf``: the
    pair :func:`hf_mrope` returns, or None to leave transformers out."""
    cos, sin, hf_ids = tables
    q, k, copy, run = rotation_calls(q, k, backward)

    both = lambda apply: run(lambda: (apply(q, cos, sin), apply(k, cos, sin)))  # noqa: E731
    fns = {
        "copy": copy,
        "triton": run(lambda: apply_rotary_qk_triton(q, k, cos, sin)),
        "triton apart": both(apply_rotary_triton),
        "compiled q+k static": run(lambda: _rotate_both_static(q, k, cos, sin)),
        "eager": both(apply_rotary),
    }
    if hf is not None:
        hf_rope, hf_apply = hf
        hf_cos, hf_sin = hf_rope(q, hf_ids)
        expected = (3,) * isinstance(hf_apply, functools.partial) + (q.shape[0], q.shape[2], q.shape[3])
        if tuple(hf_cos.shape) != expected:  # another transformers layout: better no column than a wrong one
            raise RuntimeError(f"transformers' tables have shape {tuple(hf_cos.shape)}, expected {expected}")
        hf_compiled = torch.compile(hf_apply)
        fns["hf eager"] = run(lambda: hf_apply(q, k, hf_cos, hf_sin))
        fns["hf compiled"] = run(lambda: hf_compiled(q, k, hf_cos, hf_sin))
        fns["hf eager + table"] = run(lambda: hf_apply(q, k, *hf_rope(q, hf_ids)))
    return fns


@torch.compile(dynamic=False)
def _rotate_both_static(q, k, cos, sin):
    """q and k in one graph, shapes fixed: what a whole-model compile of a fixed-size batch sees."""
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def sweep_launch(q, k, cos, sin, moved: float, bandwidth: float, timer, rounds: int, repeats: int) -> list[str]:
    """The forward kernel's % of the copy bandwidth for each (tile, warps) of SWEEP, in that order."""
    fns = {(tile, warps): functools.partial(triton_rope.rotate, q, k, cos, sin, tile=tile, num_warps=warps)
           for tile, warps in SWEEP}
    times = time_side_by_side(fns, rounds=rounds, repeats=repeats, timer=timer)
    return [f"{100 * moved / times[setting] / bandwidth:.0f}%" for setting in SWEEP]


SWEEP = [(tile, warps) for tile in (1024, 2048, 4096) for warps in (4, 8)]


def copy_bandwidth(device, gib: float, timer) -> float:
    """Bytes read plus written per second by a device-to-device copy of ``gib`` GiB."""
    x = torch.empty(int(gib * 2**30) // 4, dtype=torch.float32, device=device).normal_()
    y = torch.empty_like(x)
    t = timer(lambda: y.copy_(x), repeats=20, warmup=3)
    return 2 * x.numel() * 4 / t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[8, 16, 4096, 128], metavar=("B", "H", "N", "D"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--copy-gib", type=float, default=4.0, help="size of the bandwidth-measuring copy")
    args = parser.parse_args()
    import transformers

    device = torch.device(args.device)
    timer = time_cuda if device.type == "cuda" else time_call
    torch._dynamo.config.recompile_limit = 64
    torch.manual_seed(0)
    b, h, n, d = args.shape
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    bandwidth = copy_bandwidth(device, args.copy_gib, timer)
    print(f"RoPE apply on q and k, (b, h, n, d) = ({b}, {h}, {n}, {d}), {name}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"device-to-device copy of {args.copy_gib:g} GiB: {bandwidth / 1e9:.0f} GB/s (read + written)\n")

    section = default_mrope_section(d // 2)
    hf = hf_mrope(d, section, device)
    mrope_ids = torch.randint(0, n, (3, b, n), device=device)
    text_ids = torch.arange(n, device=device).expand(3, b, n)
    variants = {  # name -> (our rope module, its positions, the (3, b, n) ids transformers' tables read)
        "M-RoPE (b, n, k)": (MultimodalRotaryEmbedding(d).to(device), mrope_ids, mrope_ids),
        "1D / 2D (n, k)": (RotaryEmbedding(d).to(device), torch.arange(n, device=device), text_ids),
    }
    names = ["triton", "triton apart", "compiled q+k static", "eager", "hf eager", "hf compiled",
             "hf eager + table"]
    error_rows, tables_out, sweeps = [], {False: [], True: []}, {}
    for variant, (rope, positions, hf_ids) in variants.items():
        cos, sin = rope(positions)
        for dtype_name, dtype in DTYPES.items():
            q, k = (torch.randn(b, h, n, d, device=device, dtype=dtype) for _ in range(2))
            error_rows.append([variant, dtype_name] + [f"{e:.1e}" for e in check_exact(q, cos, sin).values()])
            moved = 2 * 2 * q.numel() * q.element_size() + 2 * cos.numel() * cos.element_size()  # q, k in and out
            sweeps[variant, dtype_name] = sweep_launch(q, k, cos, sin, moved, bandwidth, timer, args.rounds,
                                                       args.repeats)
            for backward in (False, True):
                try:
                    fns = contenders(q.clone(), k.clone(), (cos, sin, hf_ids), hf, backward)
                except RuntimeError as err:
                    print(f"transformers' contenders left out: {err}")
                    fns = contenders(q.clone(), k.clone(), (cos, sin, hf_ids), None, backward)
                for fn in fns.values():  # compile outside the timed rounds
                    fn()
                times = time_side_by_side(fns, rounds=args.rounds, repeats=args.repeats, timer=timer)
                bound = times["copy"]
                passes = 2 if backward else 1
                achieved = passes * moved / times["triton"]
                tables_out[backward].append(
                    [variant, dtype_name, f"{bound * 1e3:.3f}", f"{times['triton'] * 1e3:.3f}", f"{achieved / 1e9:.0f}",
                     f"{100 * achieved / bandwidth:.0f}%"]
                    + [f"{times[c] / times['triton']:.2f}x ({times[c] * 1e3:.3f})" if c in times else "—"
                       for c in names[1:]])
                print(f"  {variant} {dtype_name} {'fwd+bwd' if backward else 'fwd'}: triton "
                      f"{times['triton'] * 1e3:.3f} ms, copy {bound * 1e3:.3f} ms", flush=True)

    print("\n**Exactness of the kernel** (max |error| / max |reference|; q of the shape above)\n")
    print(markdown_table(["RoPE", "dtype", "out vs eager", "dq vs eager", "out vs fp64", "dq vs fp64"], error_rows))
    for backward, rows in tables_out.items():
        print(f"\n**{'forward + backward' if backward else 'forward'}**: triton's achieved bandwidth, and each "
              "other contender's time as a multiple of triton's (ms in brackets)\n")
        print(markdown_table(["RoPE", "dtype", "copy ms", "triton ms", "triton GB/s", "% of copy"] + names[1:], rows))
    default = (triton_rope.TILE, triton_rope.NUM_WARPS)
    print("\n**Launch settings, forward**: % of the copy bandwidth by tile (elements of half a tile) x warps\n")
    print(markdown_table(["RoPE", "dtype"] + [f"{t} x {w}" + (" (default)" if (t, w) == default else "")
                                             for t, w in SWEEP],
                         [[variant, dtype_name, *cells] for (variant, dtype_name), cells in sweeps.items()]))

if __name__ == "__main__":
    main()
