"""Caption metrics without Java: BLEU-4 (torchmetrics) and CIDEr-D (re-implemented after pycocoevalcap).

Both take one prediction and a list of references per image. Text is lower-cased and split on non-alphanumerics,
a stand-in for the PTB tokenizer the COCO toolkit runs through Java, so absolute figures can differ slightly from
the official server's; comparisons between our own runs are exact.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def bleu4(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU-4 with uniform weights and the brevity penalty, in [0, 1]."""
    from torchmetrics.functional.text import bleu_score

    if not predictions:
        return 0.0
    preds = [" ".join(tokenize(p)) for p in predictions]
    refs = [[" ".join(tokenize(r)) for r in rs] for rs in references]
    return float(bleu_score(preds, refs, n_gram=4))


def _ngrams(words: list[str], n_max: int = 4) -> Counter:
    return Counter(tuple(words[i:i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1))


def cider_d(predictions: list[str], references: list[list[str]], sigma: float = 6.0, n_max: int = 4) -> float:
    """CIDEr-D (Vedantam et al. 2015, as in pycocoevalcap): tf-idf n-gram cosine, candidate counts clipped by the
    reference's, a Gaussian penalty on the length difference, x10. Document frequencies come from the references of
    this corpus, so score a whole evaluation set at once."""
    if not predictions:
        return 0.0
    refs = [[_ngrams(tokenize(r), n_max) for r in rs] for rs in references]
    df: Counter = Counter()
    for image_refs in refs:
        df.update(set().union(*image_refs) if image_refs else set())
    log_n = math.log(float(len(refs)))

    def vector(counts: Counter):
        vec = [{} for _ in range(n_max)]
        norm = [0.0] * n_max
        for gram, tf in counts.items():
            n = len(gram) - 1
            vec[n][gram] = tf * (log_n - math.log(max(1.0, df[gram])))
            norm[n] += vec[n][gram] ** 2
        length = sum(tf for gram, tf in counts.items() if len(gram) == 1)
        return vec, [math.sqrt(x) for x in norm], length

    def similarity(hyp, ref) -> float:
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
        total = 0.0
        for n in range(n_max):
            dot = sum(min(v, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, v in vh[n].items())
            if nh[n] and nr[n]:
                total += dot / (nh[n] * nr[n]) * penalty
        return total / n_max

    scores = []
    for pred, image_refs in zip(predictions, refs):
        hyp = vector(_ngrams(tokenize(pred), n_max))
        sims = [similarity(hyp, vector(r)) for r in image_refs]
        scores.append(10.0 * sum(sims) / max(len(sims), 1))
    return sum(scores) / len(scores)
