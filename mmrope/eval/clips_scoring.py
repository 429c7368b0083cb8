"""Scoring clips captions: read a caption back into the objects it names and the events it claims, and judge the
claims against the clip's one event (see :mod:`mmrope.data.clips` for the benchmark).

Per-clip scores, each in [0, 1]:
    exact      the normalised text (lowercase words, no punctuation) is a reference caption
    attribute  named objects that are in the clip (by initial colour x shape) / objects named; 0 if none named
    event      1 iff some claim is the clip's event and every claim is right: right type, object(s), direction,
               colour or order; a wrong extra claim, or any named object not in the clip, makes it 0
    motion / order / change   the event score on move / appear / turn clips; None on clips of the other types
"""

import re

from mmrope.data.clips import DIRECTIONS
from mmrope.data.shapes import COLOUR_RGB, SHAPES

SCORE_KEYS = ("exact", "attribute", "event", "motion", "order", "change")
TYPE_SCORE = {"move": "motion", "appear": "order", "turn": "change"}  # per-type accuracy, named for what it tests

_WORD_RE = re.compile(r"[a-z]+")
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{s + "s": s for s in SHAPES}}
_VERBS = {
    **dict.fromkeys(("moves", "move", "moved", "moving", "goes", "slides"), "move"),
    **dict.fromkeys(("appears", "appear", "appeared", "appearing"), "appear"),
    **dict.fromkeys(("turns", "turn", "turned", "turning", "becomes", "changes"), "turn"),
}
_DIRECTION_WORDS = {d + suffix: d for d in DIRECTIONS for suffix in ("", "ward", "wards")}


def _normalise(text: str) -> str:
    return " ".join(_WORD_RE.findall(text.lower()))


def parse_clip_caption(text: str) -> dict:
    """``{"objects": [{"colour", "shape"}], "events": [...], "text": str}``: each colour x shape named once, in
    order of first mention; each event ``{"type", "object", ...}`` with ``"direction"`` (move), ``"after"``
    (appear: index of the object that was there first) or ``"colour"`` (turn), any of which is None when the
    caption does not say. ``text`` is the normalised caption, which ``score_clip_caption`` needs for ``exact``.

    Reads the templates' captions and their loose variants: articles optional, "moves right" for "moves to the
    right", "X appears before Y" for "Y appears after X", "after X, Y appears", "turns into a blue circle".
    """
    words = _WORD_RE.findall(text.lower())
    objects, keys = [], {}
    items = []  # (kind, value): "obj" (index into objects), "verb", "dir", "colour", "after", "before"
    k = 0
    while k < len(words):
        w = words[k]
        pair = k + 1 < len(words) and w in COLOUR_RGB and words[k + 1] in _SHAPE_WORDS
        after_turn = bool(items) and items[-1] == ("verb", "turn")
        if pair and not after_turn:
            key = (w, _SHAPE_WORDS[words[k + 1]])
            if key not in keys:
                keys[key] = len(objects)
                objects.append({"colour": key[0], "shape": key[1]})
            items.append(("obj", keys[key]))
            k += 2
            continue
        if w in COLOUR_RGB:
            items.append(("colour", w))
            k += 2 if pair else 1  # "turns into a blue circle": the shape is the subject's, not a new object
            continue
        if w in _VERBS:
            items.append(("verb", _VERBS[w]))
        elif w in _DIRECTION_WORDS:
            items.append(("dir", _DIRECTION_WORDS[w]))
        elif w in ("after", "before"):
            items.append((w, None))
        k += 1
    return {"objects": objects, "events": _events(items), "text": " ".join(words)}


def _events(items: list[tuple]) -> list[dict]:
    """One event per verb. Its subject is the last object named before the verb and after the previous verb's
    words, or the previous subject ("moves left and turns red"); its details are read up to the next verb."""
    verbs = [p for p, (kind, _) in enumerate(items) if kind == "verb"]
    events, subject, start = [], None, 0
    for n, p in enumerate(verbs):
        end = verbs[n + 1] if n + 1 < len(verbs) else len(items)
        before, window = items[start:p], items[p + 1:end]
        named = [v for kind, v in before if kind == "obj"]
        subject = named[-1] if named else subject
        kind = items[p][1]
        event = {"type": kind, "object": subject}
        if kind == "move":
            event["direction"] = next((v for t, v in window if t == "dir"), None)
        elif kind == "turn":
            event["colour"] = next((v for t, v in window if t == "colour"), None)
        else:
            event["after"] = None
            for q, (t, _) in enumerate(window):  # "X appears after Y" / "X appears before Y"
                other = next((v for t2, v in window[q + 1:] if t2 == "obj"), None)
                if t == "after" and other is not None:
                    event["after"] = other
                elif t == "before" and other is not None:
                    event["object"], event["after"] = other, subject
                else:
                    continue
                break
            else:  # "after Y, X appears"
                marks = [q for q, (t, _) in enumerate(before) if t == "after"]
                first = next((v for t, v in before[marks[-1] + 1:] if t == "obj"), None) if marks else None
                if first is not None and first != subject:
                    event["after"] = first
        events.append(event)
        start = p + 1
    return events


def _claim_right(claim: dict, event: dict, index: dict, named: list[dict]) -> bool:
    def resolve(i):
        return None if i is None else index.get((named[i]["colour"], named[i]["shape"]))

    if claim["type"] != event["type"] or resolve(claim["object"]) != event["object"]:
        return False
    if event["type"] == "move":
        return claim["direction"] == event["direction"]
    if event["type"] == "appear":
        return resolve(claim["after"]) == event["after"]
    return claim["colour"] == event["colour"]


def score_clip_caption(prediction: str | dict, clip: dict) -> dict:
    """Scores of one caption (or its ``parse_clip_caption`` result) against a clip; see the notes above
    ``parse_clip_caption``. A parsed dict without ``"text"`` scores ``exact`` 0."""
    parsed = parse_clip_caption(prediction) if isinstance(prediction, str) else prediction
    truth, event = clip["objects"], clip["event"]
    index = {(o["colour"], o["shape"]): i for i, o in enumerate(truth)}  # initial names: the ones captions use
    named = parsed["objects"]
    present = [(o["colour"], o["shape"]) in index for o in named]
    claims = parsed["events"]
    right = bool(claims) and all(present) and all(_claim_right(c, event, index, named) for c in claims)
    text = parsed.get("text")
    scores = {
        "exact": float(text is not None and text in {_normalise(c) for c in clip["captions"]}),
        "attribute": sum(present) / len(named) if named else 0.0,
        "event": float(right),
    }
    for kind, key in TYPE_SCORE.items():
        scores[key] = scores["event"] if event["type"] == kind else None
    return scores


def aggregate_clips(scores: list[dict]) -> dict:
    """Mean of each score over the clips where it is not None (None where it is None everywhere), and ``n``, the
    number of clips: "motion" is then the move accuracy over move clips only, and so on."""
    keys = [*SCORE_KEYS, *sorted({k for s in scores for k in s} - set(SCORE_KEYS) - {"n"})]
    out = {}
    for k in keys:
        values = [s[k] for s in scores if s.get(k) is not None]
        out[k] = sum(values) / len(values) if values else None
    out["n"] = len(scores)
    return out


def score_clip_captions(predictions: list, clips: list[dict]) -> dict:
    """``aggregate_clips`` of ``score_clip_caption`` over paired predictions and clips."""
    if len(predictions) != len(clips):
        raise ValueError(f"score_clip_captions: {len(predictions)} predictions for {len(clips)} clips")
    return aggregate_clips([score_clip_caption(p, c) for p, c in zip(predictions, clips, strict=True)])
