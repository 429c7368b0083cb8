"""Benchmarks, one registered class each (:mod:`mmrope.benchmarks.base`): ``data.dataset`` names one.

    base.py      BENCHMARKS (the registry), Benchmark, EvalSet
    shapes.py    shapes: scenes of coloured shapes; places (level 1), relations (levels 2-3)
    clips.py     clips: synthetic videos with one event each
    captions.py  captions (COCO / imagefolder / CSV files), shards (WebDataset)
"""

from mmrope.benchmarks import captions, clips, shapes  # noqa: F401 - each registers itself
from mmrope.benchmarks.base import BENCHMARKS, Benchmark, EvalSet, benchmark_of, register_benchmark

__all__ = ["BENCHMARKS", "Benchmark", "EvalSet", "benchmark_of", "register_benchmark"]
