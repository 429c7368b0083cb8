"""Timing helpers shared by the benchmarks: medians of interleaved repeats, a markdown table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_call(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_cuda(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median time of ``fn()`` in seconds on the current CUDA device, between CUDA events (GPU work is
    asynchronous: a host clock would time the launches)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def time_side_by_side(fns: dict[str, Callable[[], object]], rounds: int = 5, repeats: int = 10,
                      timer: Callable[..., float] = time_call) -> dict[str, float]:
    """Median per-call time of each function, measured in interleaved rounds so that load on a shared machine hits
    every contender alike. ``timer``: :func:`time_call`, or :func:`time_cuda` for GPU work."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm up
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(timer(fn, repeats=repeats, warmup=0))
    return {name: statistics.median(ts) for name, ts in samples.items()}


def rotation_calls(q, k, backward: bool):
    """The scaffolding both RoPE benchmarks share: (q, k, copy, run) where ``run(fn)`` turns ``fn() -> (q', k')``
    into a timed call that, with ``backward``, also back-propagates fixed gradients to q and k (returned, not
    accumulated into q.grad, which would add a pass), and ``copy`` is the memory bound: cloning q and k (and the
    two gradients, with ``backward``)."""
    import torch

    gq, gk = torch.randn_like(q), torch.randn_like(k)
    if backward:
        q, k = q.requires_grad_(), k.requires_grad_()

    def run(fn):
        def call():
            out_q, out_k = fn()
            if backward:
                torch.autograd.grad((out_q, out_k), (q, k), (gq, gk))
        return call

    def copy():
        return (q.detach().clone(), k.detach().clone()) + ((gq.clone(), gk.clone()) if backward else ())

    return q, k, copy, run


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
