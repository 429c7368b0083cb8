"""Training step of the ``shapes_base`` model on one GPU: throughput, achieved TFLOP/s and MFU, and where time goes.

    python benchmarks/bench_gpu_train.py [--config configs/shapes_base.yaml] [--batch 256] [--steps 10]
                                         [--modes eager compiled cudagraphs]

One step is forward, loss, backward and a fused AdamW step, under bf16 autocast (Lightning's ``bf16-mixed``), on a
batch laid out as the shapes data is (see bench_train_step.make_batch; the images are noise and the token ids
random, which changes nothing in the cost; the data loader's CPU work is left out, and so are positions and mask,
worked out on the host as the training module does before a batch moves: ``Captioner.layout``). Modes, timed
side by side: ``eager`` (the rotations through the Triton kernel), ``compiled`` (``torch.compile``, as
``model.compile: true`` does; one graph) and ``cudagraphs`` (the same compile with ``mode="reduce-overhead"``,
which replays each step's kernels as one CUDA graph, so no kernel waits on its launch). The
right-padded batch needs no attention mask, so SDPA can take its flash kernel; the script checks that both towers'
attention runs under flash alone.

FLOPs are counted by ``torch.utils.flop_counter`` on one eager step (every matmul and attention product, forward
and backward, at the padded length) and, as a cross-check, by :func:`mmrope.model.flops_per_token` (PaLM's
estimate). MFU = counted FLOPs per second over the card's peak: the dense bf16 datasheet figure (989 TFLOP/s for
the H100 / H200 SXM) and an 8192^3 bf16 matmul measured in the same run. A profile of a few compiled steps splits
GPU time into matmuls, attention and the rest (normalisations, activations, RoPE, the optimizer), and sets GPU busy
time against wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from bench_train_step import batch_grid, make_batch
from common import markdown_table, time_cuda, time_side_by_side

from mmrope.model.captioner import Captioner, Layout
from mmrope.model.config import CaptionerConfig, TextConfig, VisionConfig
from mmrope.model.flops import flops_per_token, num_parameters

ROOT = Path(__file__).resolve().parents[1]
DATASHEET_BF16 = 989e12  # dense bf16, H100 / H200 SXM


def model_config(path: Path, vocab_size: int) -> CaptionerConfig:
    model = yaml.safe_load(path.read_text())["model"]
    return CaptionerConfig(vision=VisionConfig(**model["vision"]), text=TextConfig(**model["text"],
                           vocab_size=vocab_size), position_scheme=model.get("position_scheme", "mrope"))


def matmul_rate(device, size: int = 8192) -> float:
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    return 2 * size**3 / time_cuda(lambda: a @ b, repeats=10, warmup=3)


def forward_loss(model, batch):
    return model(batch["images"], batch["input_ids"], labels=batch["labels"], layout=batch["layout"]).loss


def train_step(model, optimizer, batch):
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def counted_flops(model, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward_loss(model, batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def flash_only(model, batch) -> str:
    """Run a forward with SDPA restricted to flash: "yes", or why not."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", dtype=torch.bfloat16):
            forward_loss(model, batch)
        return "yes"
    except RuntimeError as err:
        return f"no ({str(err).splitlines()[0][:120]})"


def category(kernel: str) -> str:
    name = kernel.lower()
    if "flash" in name or "fmha" in name or "attention" in name:
        return "attention (flash)"
    if any(key in name for key in ("gemm", "nvjet", "cutlass", "xmma", "wgmma", "cublas", "matmul")):
        return "matmuls"
    if "adam" in name or "foreach" in name:
        return "optimizer"
    return "other (norms, activations, RoPE, casts, copies)"


def profile(step, steps: int = 3) -> tuple[dict[str, float], list[tuple[str, float]], float]:
    """GPU kernel time per step by category and by kernel (seconds), and wall time per step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / steps
    totals: dict[str, float] = {}
    kernels = []
    for event in prof.key_averages():
        device_time = getattr(event, "self_device_time_total", None)
        if device_time is None:
            device_time = getattr(event, "self_cuda_time_total", 0)
        if device_time > 0 and str(getattr(event, "device_type", "")).endswith("CUDA"):
            cat = category(event.key)
            totals[cat] = totals.get(cat, 0.0) + device_time / 1e6 / steps
            kernels.append((event.key, device_time / 1e6 / steps))
    return totals, sorted(kernels, key=lambda kv: -kv[1]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/shapes_base.yaml")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=64, help="shapes' word vocabulary is about this size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=["eager", "compiled", "cudagraphs"],
                        default=["eager", "compiled"], help="eager always runs: the others are set against it")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch._dynamo.config.recompile_limit = 64

    config = model_config(args.config, args.vocab_size)
    host = make_batch(config, args.batch)
    torch.manual_seed(0)
    eager = Captioner(config)
    # positions and mask on the host, as the training module does before moving a batch
    layout = eager.layout(host["input_ids"], batch_grid(config, args.batch), host["attention_mask"])
    eager.to(device)
    batch = {key: value.to(device) for key, value in host.items()}
    batch["layout"] = Layout(*(None if t is None else t.to(device) for t in layout))
    b, n = batch["input_ids"].shape
    tokens = int(batch["attention_mask"].sum())
    peak = matmul_rate(device)
    print(f"{args.config.name} model, batch {b} images of {config.vision.image_size} px, joint sequence {n} tokens "
          f"({tokens} real), {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"bf16 matmul 8192^3 measured at {peak / 1e12:.0f} TFLOP/s (datasheet {DATASHEET_BF16 / 1e12:.0f})")

    print(f"parameters: {num_parameters(eager) / 1e6:.1f} M; flash attention alone runs the model: "
          f"{flash_only(eager, batch)}")
    flops = counted_flops(eager, batch)
    palm = flops_per_token(config, n) * n * b
    print(f"FLOPs per step: {flops / 1e12:.2f} T counted, {palm / 1e12:.2f} T by flops_per_token (padded length)\n")

    modes = {"eager": eager}
    for mode in dict.fromkeys(m for m in args.modes if m != "eager"):
        torch.manual_seed(0)
        modes[mode] = Captioner(config).to(device)
        modes[mode].compile(**({"mode": "reduce-overhead"} if mode == "cudagraphs" else {}))
    fns, first = {}, {}
    for name, model in modes.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
        fns[name] = train_step(model, optimizer, batch)
        start = time.perf_counter()
        try:
            for _ in range(3):  # compile (forward, backward) and settle
                fns[name]()
            torch.cuda.synchronize()
        except Exception as err:  # a mode that cannot run (a CUDA graph that cannot capture): say so, keep the rest
            print(f"  {name}: failed after {time.perf_counter() - start:.0f} s: {str(err).splitlines()[0][:200]}")
            del fns[name]
            continue
        first[name] = time.perf_counter() - start
        print(f"  {name}: first 3 steps {first[name]:.1f} s", flush=True)
    times = time_side_by_side(fns, rounds=args.rounds, repeats=args.steps, timer=time_cuda)

    rows = []
    for name, t in times.items():
        rows.append([name, f"{t * 1e3:.1f}", f"{b / t:.0f}", f"{tokens / t:.0f}", f"{flops / t / 1e12:.0f}",
                     f"{100 * flops / t / DATASHEET_BF16:.1f}%", f"{100 * flops / t / peak:.1f}%",
                     f"{times['eager'] / t:.2f}x", f"{first[name]:.0f}"])
    print(markdown_table(["mode", "ms / step", "images/s", "tokens/s", "TFLOP/s", "MFU (datasheet)",
                          "MFU (measured matmul)", "vs eager", "first 3 steps s"], rows))

    for name in list(fns)[1:]:
        totals, kernels, wall = profile(fns[name])
        busy = sum(totals.values())
        print(f"\n**Where a {name} step's time goes** (profiler, 3 steps): wall {wall * 1e3:.1f} ms, GPU busy "
              f"{busy * 1e3:.1f} ms ({100 * busy / wall:.0f}%)\n")
        print(markdown_table(["GPU kernels", "ms / step", "share of busy"],
                             [[cat, f"{t * 1e3:.2f}", f"{100 * t / busy:.0f}%"]
                              for cat, t in sorted(totals.items(), key=lambda kv: -kv[1])]))
        print(f"\n**The {name} step's 15 longest kernels**\n")
        print(markdown_table(["kernel", "category", "ms / step"],
                             [[kernel[:90].replace("|", "/"), category(kernel).split(" (")[0], f"{t * 1e3:.2f}"]
                              for kernel, t in kernels[:15]]))


if __name__ == "__main__":
    main()
