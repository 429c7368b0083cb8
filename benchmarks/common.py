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


def time_side_by_side(fns: dict[str, Callable[[], object]], rounds: int = 5, repeats: int = 10) -> dict[str, float]:
    """Median per-call time of each function, measured in interleaved rounds so that load on a shared machine hits
    every contender alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm up
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(time_call(fn, repeats=repeats, warmup=0))
    return {name: statistics.median(ts) for name, ts in samples.items()}


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
