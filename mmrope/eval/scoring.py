"""One scoring of generated captions for training's validation and ``mmrope eval`` alike, so the two never differ."""

from __future__ import annotations

from collections.abc import Callable

from mmrope.eval.metrics import bleu4, cider_d


def score_generated(predictions: list[str], references: list[list[str]], scenes: list[dict | None] | None = None,
                    accuracies: Callable[[list[str], list[dict]], dict] | None = None) -> dict[str, float]:
    """BLEU-4 and CIDEr-D against the references and, when every sample carries its scene (shapes) or clip, the
    benchmark's own ``accuracies`` of the captions (:meth:`mmrope.benchmarks.Benchmark.accuracies`; accuracies a
    level does not have, axis at level 1, motion without move clips, are left out)."""
    metrics = {"bleu4": bleu4(predictions, references), "cider": cider_d(predictions, references)}
    if accuracies is not None and predictions and scenes and all(s is not None for s in scenes):
        metrics.update({k: v for k, v in accuracies(predictions, scenes).items() if v is not None})
    return metrics
