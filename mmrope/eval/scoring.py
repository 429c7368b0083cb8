"""One scoring of generated captions for training's validation and ``mmrope eval`` alike, so the two never differ."""

from __future__ import annotations

from mmrope.eval.clips_scoring import score_clip_captions
from mmrope.eval.metrics import bleu4, cider_d
from mmrope.eval.shapes_scoring import score_captions


def score_generated(predictions: list[str], references: list[list[str]],
                    scenes: list[dict | None] | None = None) -> dict[str, float]:
    """BLEU-4 and CIDEr-D against the references and, when every sample carries its shapes scene or clip, the
    benchmark's accuracies (:mod:`mmrope.eval.shapes_scoring`, :mod:`mmrope.eval.clips_scoring`); accuracies a
    level does not have (axis at level 1, motion without move clips) are left out."""
    metrics = {"bleu4": bleu4(predictions, references), "cider": cider_d(predictions, references)}
    if predictions and scenes and all(s is not None for s in scenes):
        score = score_clip_captions if scenes[0].get("kind") == "clip" else score_captions
        metrics.update({k: v for k, v in score(predictions, scenes).items() if k != "n" and v is not None})
    return metrics
