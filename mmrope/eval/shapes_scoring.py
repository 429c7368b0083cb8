"""Score a generated caption against a shapes scene: are the objects, their attributes and their relations right?

``parse_caption`` reads a caption back into objects, relations, a place and a count; ``score_caption`` compares
that with the scene. Relations are judged against the scene's geometry, not its caption's wording, so any true
statement counts: "blue square right of red circle" is as right as "red circle left of blue square", and at
level 3 a model may describe different pairs than the reference did.

Per-sample scores, each in [0, 1]:
    attribute  objects named with the right colour and shape (and size at level 3), divided by
               max(objects in the scene, objects named): extra or missing objects cost
    place      level 1: 1 if the place is right (the level's headline)
    relation   levels 2-3: relation claims that hold, divided by
               max(claims made, relations in the reference caption). A claim about an object not in the scene,
               or a contradiction ("A left of B, A right of B"), does not hold. The ablation's main metric.
    axis       levels 2-3: as relation, but a claim counts when its axis (horizontal or vertical) is right,
               whatever its direction; relation far below axis means the model reads rows and columns but not sides
    named      level 2: 1 if the caption names both objects of the scene right and nothing else
    relation_named, axis_named
               level 2, only for captions with named = 1: relation and axis as above. A caption that names the
               wrong object is left out rather than counted as a wrong relation, so these read the relation alone
               (their mean is over the captions that have them: ``aggregate`` keeps each score's own count)
    count      level 3: 1 if the stated count is the number of objects
    exact      1 if all of the above are 1
"""

import re
from itertools import pairwise

from mmrope.data.shapes import COLOUR_RGB, COUNT_WORDS, DOMINANCE, INVERSE, SHAPES, SIZES

_TOKEN_RE = re.compile(r"[a-z]+|\d+|[,;:.!?]")
_CLAUSE_BREAKS = {",", ";", ":", ".", "!", "?", "and"}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{s + "s": s for s in SHAPES}}
_RELATION_WORDS = {"left": "left of", "right": "right of", "above": "above", "over": "above", "below": "below",
                   "under": "below", "beneath": "below", "underneath": "below"}
_NUMBER_WORDS = {**{w: n for n, w in COUNT_WORDS.items()}, "a": 1, "an": 1}
_COUNT_NOUNS = {"shapes", "shape", "objects", "object", "things"}
_AXIS = {"left of": "x", "right of": "x", "above": "y", "below": "y"}


def parse_caption(text: str) -> dict:
    """``{"objects": [{"colour", "shape", "size"}], "relations": [{"subject", "relation", "object"}],
    "place": str | None, "count": int | None}``; relation ends index ``objects``, which holds each colour x shape
    once, in order of first mention. A size said two different ways becomes ``"inconsistent"``."""
    objects, keys, relations = [], {}, []
    place, count = None, None
    for clause in _clauses(text):
        found, rest = [], []  # objects as (position, index into objects); other words as (position, word)
        k = 0
        while k < len(clause):
            size = clause[k] if clause[k] in SIZES else None
            j = k + (size is not None)
            if j + 1 < len(clause) and clause[j] in COLOUR_RGB and clause[j + 1] in _SHAPE_WORDS:
                key = (clause[j], _SHAPE_WORDS[clause[j + 1]])
                if key not in keys:
                    keys[key] = len(objects)
                    objects.append({"colour": key[0], "shape": key[1], "size": size})
                obj = objects[keys[key]]
                if size is not None and obj["size"] not in (None, size):
                    obj["size"] = "inconsistent"
                elif size is not None:
                    obj["size"] = size
                found.append((k, keys[key]))
                k = j + 2
                continue
            rest.append((k, clause[k]))
            k += 1
        for a, b in pairwise(found):
            between = [w for p, w in rest if a[0] < p < b[0] and w in _RELATION_WORDS]
            if between:
                relations.append({"subject": a[1], "relation": _RELATION_WORDS[between[0]], "object": b[1]})
        if len(found) == 1:
            place = _place([w for _, w in rest]) or place
        for (_, w), (_, nxt) in pairwise(rest):
            if nxt in _COUNT_NOUNS and (w in _NUMBER_WORDS or w.isdigit()):
                count = int(w) if w.isdigit() else _NUMBER_WORDS[w]
    return {"objects": objects, "relations": relations, "place": place, "count": count}


def _clauses(text: str) -> list[list[str]]:
    clauses, current = [], []
    for t in _TOKEN_RE.findall(text.lower()):
        if t in _CLAUSE_BREAKS:
            clauses.append(current)
            current = []
        else:
            current.append(t)
    return [c for c in clauses + [current] if c]


def _place(words: list[str]) -> str | None:
    row = next((w for w in words if w in ("top", "bottom")), None)
    col = next((w for w in words if w in ("left", "right")), None)
    if row or col:
        return " ".join(p for p in (row, col) if p)
    return "centre" if any(w in ("centre", "center", "middle") for w in words) else None


def relation_holds(a: dict, b: dict, relation: str) -> bool:
    """Is ``a`` ``relation`` ``b`` in the scene? True when the offset along the relation's axis has the right
    sign and that axis is not clearly the minor one (offset more than 1 / DOMINANCE of the other axis's)."""
    dx, dy = b["x"] - a["x"], b["y"] - a["y"]
    along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    return along > 0 and along * DOMINANCE > abs(across)


def score_caption(prediction: str | dict, scene: dict) -> dict:
    """Scores of one caption (or its ``parse_caption`` result) against a scene; see the module docstring."""
    parsed = parse_caption(prediction) if isinstance(prediction, str) else prediction
    truth, level = scene["objects"], scene["level"]
    index = {(o["colour"], o["shape"]): i for i, o in enumerate(truth)}
    named = parsed["objects"]

    def right(p: dict) -> bool:
        i = index.get((p["colour"], p["shape"]))
        return i is not None and (level < 3 or p["size"] == truth[i].get("size"))

    scores = {"attribute": sum(map(right, named)) / max(len(truth), len(named))}
    if level == 1:
        scores["place"] = float(parsed["place"] == truth[0]["place"])
    else:
        claims = set()  # (scene index, relation, scene index), or None for a claim about an absent object
        for r in parsed["relations"]:
            a = index.get((named[r["subject"]]["colour"], named[r["subject"]]["shape"]))
            b = index.get((named[r["object"]]["colour"], named[r["object"]]["shape"]))
            if a is None or b is None or a == b:
                claims.add(("absent", len(claims)))
            else:  # one orientation per pair, so "A left of B" and "B right of A" are one claim
                claims.add((a, r["relation"], b) if a < b else (b, INVERSE[r["relation"]], a))
        real = [c for c in claims if c[0] != "absent"]
        contradicted = {(a, b) for a, rel, b in real if (a, INVERSE[rel], b) in claims}
        holds = [relation_holds(truth[a], truth[b], rel) and (a, b) not in contradicted for a, rel, b in real]
        on_axis = [relation_holds(truth[a], truth[b], rel) or relation_holds(truth[a], truth[b], INVERSE[rel])
                   for a, rel, b in real]
        denominator = max(len(claims), len(scene["relations"]), 1)
        scores["relation"] = sum(holds) / denominator
        scores["axis"] = sum(on_axis) / denominator
        if level == 2:
            named_right = len(named) == len(truth) and all(map(right, named))
            scores["named"] = float(named_right)
            if named_right:
                scores["relation_named"], scores["axis_named"] = scores["relation"], scores["axis"]
        if level >= 3:
            scores["count"] = float(parsed["count"] == len(truth))
    scores["exact"] = float(all(v == 1.0 for v in scores.values()))
    return scores


def aggregate(scores: list[dict]) -> dict:
    """Mean of each score over the samples that have it, and ``n``, the number of samples."""
    keys = sorted({k for s in scores for k in s})
    out = {k: sum(s[k] for s in scores if k in s) / sum(k in s for s in scores) for k in keys}
    out["n"] = len(scores)
    return out


def score_captions(predictions: list[str], scenes: list[dict]) -> dict:
    """``aggregate`` of ``score_caption`` over paired predictions and scenes."""
    if len(predictions) != len(scenes):
        raise ValueError(f"score_captions: {len(predictions)} predictions for {len(scenes)} scenes")
    return aggregate([score_caption(p, s) for p, s in zip(predictions, scenes, strict=True)])
