"""The "clips" benchmark: short synthetic videos whose captions are only right if the model reads the time axis.

A clip holds exactly two objects and exactly one event, and its caption says which event happened:
    move    one object moves left, right, up or down by 0.3-0.5   "the red circle moves to the right"
            of the canvas; the other stays still                 ("... to the left", "... up", "... down")
    appear  the second object is absent until tau in [0.3, 0.7]  "a blue square appears after the green triangle"
    turn    one object changes colour at tau in [0.3, 0.7]       "the red circle turns blue"
Objects are always named by their initial colour. Each caption is only true one way round in time: a model that
ignores frame order cannot tell "moves left" from "moves right", nor which object came first.

A clip is continuous: over normalised time tau in [0, 1] each object moves linearly from (x0, y0) to (x1, y1)
(x right, y down, fractions of the canvas), appears at its ``appear`` time and may turn at its ``turn`` time. Frame
f of T is taken at tau = f / (T - 1), so the first and last frames are the clip's start and end at any T and the
same clip rendered with more frames is the same motion sampled more finely (temporal extrapolation). Events happen
strictly inside (0, 1), so the first and last frames always differ and every caption can be judged from them.

Splits are those of ``mmrope.data.shapes``: "train", "val" and "test" are disjoint random streams that never show a
held-out colour x shape (``held_out_combos``), not even as the colour an object turns into; each "compositional"
clip names at least one. The two objects of a clip are distinct colour x shape at every moment, so a name is never
ambiguous. Each clip is sampled from (split, seed, index) alone: frame count, canvas and duration only change how
it is shown. Captions are scored by :mod:`mmrope.eval.clips_scoring`.
"""

import math
import random
from functools import lru_cache

import torch
from PIL import Image

from mmrope.data.images import ImageTransform, sample_rng, to_tensor
from mmrope.data.shapes import (
    BACKGROUND_GREY,
    COLOUR_JITTER,
    COLOUR_RGB,
    DEFAULT_COLOURS,
    DEFAULT_SHAPES,
    EDGE,
    GAP,
    RADIUS,
    SHAPES,
    SPLITS,
    held_out_combos,
    render_scene,
)
from mmrope.data.shapes_dataset import GeneratedDataset

EVENTS = ("move", "appear", "turn")
DIRECTIONS = ("left", "right", "up", "down")
DIRECTION_PHRASES = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # y grows downwards

DISPLACEMENT = (0.3, 0.5)  # a move's length, in canvas sides: several radii, so the direction is never in doubt
EVENT_TIME = (0.3, 0.7)  # when an object appears or turns: well inside the clip, so at least one frame shows each side
CHECK_TIMES = 33  # layouts are checked (inside the canvas, GAP between objects) at this many evenly spaced tau


def frame_times(frames: int) -> list[float]:
    """Normalised times of ``frames`` evenly spaced frames, first at 0.0 and last at exactly 1.0."""
    if not isinstance(frames, int) or frames < 2:
        raise ValueError(f"clips frames must be an integer of at least 2 (first and last frame), got {frames!r}")
    return [f / (frames - 1) for f in range(frames)]


def clip_fps(frames: int, duration: float) -> float:
    """Frames per second: frame f is shown at ``f * duration / (frames - 1)`` seconds, so f / fps is its time and
    the same clip at any frame count spans the same seconds (what absolute-time M-RoPE relies on)."""
    return (frames - 1) / duration


def clip_captions(clip: dict) -> list[str]:
    """The clip's one reference caption, from its event."""
    objs, event = clip["objects"], clip["event"]
    subject = objs[event["object"]]
    name = f"{subject['colour']} {subject['shape']}"
    if event["type"] == "move":
        return [f"the {name} moves {DIRECTION_PHRASES[event['direction']]}"]
    if event["type"] == "appear":
        first = objs[event["after"]]
        return [f"a {name} appears after the {first['colour']} {first['shape']}"]
    return [f"the {name} turns {event['colour']}"]


def clip_vocabulary_captions(seed: int = 0, n: int = 200) -> list[str]:
    """Text that holds every word a clip caption can use, to train a word tokenizer on: each colour, shape and
    direction word and each connecting word, plus ``n`` real captions for their order."""
    words = [*COLOUR_RGB, *SHAPES, "the", "a", "moves", "to", "appears", "after", "turns", *DIRECTIONS]
    return [" ".join(words)] + [sample_clip(seed, i)["captions"][0] for i in range(n)]


def _check_config(split, frames, canvas, colours, shapes, duration):
    if split not in SPLITS:
        raise ValueError(f"clips split must be one of {SPLITS}, got {split!r}")
    frame_times(frames)
    if not isinstance(canvas, int) or canvas <= 0 or canvas % 16:
        raise ValueError(f"clips canvas must be a positive multiple of 16 (32, 48, 64, 96, 128), got {canvas!r}")
    if not isinstance(duration, int | float) or not math.isfinite(duration) or duration <= 0:
        raise ValueError(f"clips duration must be a positive number of seconds, got {duration!r}")
    for name, given, known in (("colours", colours, COLOUR_RGB), ("shapes", shapes, SHAPES)):
        unknown = [c for c in given if c not in known]
        if unknown or len(set(given)) != len(given) or not given:
            raise ValueError(f"clips {name} must be distinct names from {list(known)}, got {list(given)}")
    for event in EVENTS:
        if not _casts(event, split == "compositional", colours, shapes):
            raise ValueError(f"clips colours x shapes {list(colours)} x {list(shapes)} leave no {split} clip with "
                             f"a '{event}' event (two distinct objects, no held-out combination outside "
                             f"'compositional'); add colours or shapes")


@lru_cache(maxsize=64)
def _casts(event: str, compositional: bool, colours: tuple, shapes: tuple) -> tuple[tuple, ...]:
    """Every allowed (subject, other, turn colour or None) for an event; the subject is the object the caption is
    about (the mover, the late object, the one that turns). Listed in a fixed order, so a seeded choice is stable.

    Outside "compositional" no object is ever a held-out combination, before or after it turns. In
    "compositional" the subject of a move or turn is held out, so the caption names it; an appear caption names
    both objects, so either may be."""
    held_out = held_out_combos(colours, shapes)
    combos = [(c, s) for c in colours for s in shapes]
    casts = []
    for subject in combos:
        for other in combos:
            if other == subject:
                continue
            if compositional:
                named = [subject, other] if event == "appear" else [subject]
                if not any(c in held_out for c in named):
                    continue
            elif subject in held_out or other in held_out:
                continue
            if event != "turn":
                casts.append((subject, other, None))
                continue
            for colour in colours:
                turned = (colour, subject[1])
                if colour != subject[0] and turned != other and (compositional or turned not in held_out):
                    casts.append((subject, other, colour))
    return tuple(casts)


def sample_clip(
    seed: int,
    index: int,
    split: str = "train",
    frames: int = 4,
    canvas: int = 64,
    colours=DEFAULT_COLOURS,
    shapes=DEFAULT_SHAPES,
    duration: float = 2.0,
) -> dict:
    """Clip ``index`` of the ``split`` stream for ``seed``: the same arguments always give the same clip, and
    ``frames``, ``canvas`` and ``duration`` change only how it is shown, never what happens in it."""
    colours, shapes = tuple(colours), tuple(shapes)
    _check_config(split, frames, canvas, colours, shapes, duration)
    rng = random.Random(f"clips:{split}:{seed}:{index}")  # its own stream: never the global RNG

    grey = rng.randint(*BACKGROUND_GREY)
    kind = rng.choice(EVENTS)
    subject_combo, other_combo, turn_colour = rng.choice(_casts(kind, split == "compositional", colours, shapes))
    subject = rng.randrange(2)  # the subject's place in the list is random, so "object 0" means nothing
    combos = [other_combo, other_combo]
    combos[subject] = subject_combo

    objects = []
    for colour, shape in combos:
        r = round(rng.uniform(*RADIUS), 4)
        objects.append({"colour": colour, "shape": shape, "r": r, "rgb": _jitter(colour, rng),
                        "x0": 0.0, "y0": 0.0, "x1": 0.0, "y1": 0.0, "appear": 0.0, "turn": None})
    event, distance = {"type": kind, "object": subject}, 0.0
    if kind == "move":
        event["direction"] = rng.choice(DIRECTIONS)
        distance = round(rng.uniform(*DISPLACEMENT), 4)
    elif kind == "appear":
        event["after"] = 1 - subject
        objects[subject]["appear"] = round(rng.uniform(*EVENT_TIME), 4)
    else:
        event["colour"] = turn_colour
        objects[subject]["turn"] = {"at": round(rng.uniform(*EVENT_TIME), 4), "colour": turn_colour,
                                    "rgb": _jitter(turn_colour, rng)}
    _place(objects, event, distance, rng)

    clip = {
        "kind": "clip", "split": split, "seed": seed, "index": index, "canvas": canvas, "frames": frames,
        "duration": float(duration), "fps": clip_fps(frames, duration), "background": grey,
        "objects": objects, "event": event,
    }
    clip["captions"] = clip_captions(clip)
    return clip


def _jitter(colour: str, rng: random.Random) -> list[int]:
    """A shade of ``colour``, as shapes draws it: never far enough off to deserve another colour word."""
    return [max(0, min(255, v + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for v in COLOUR_RGB[colour]]


def _place(objects: list[dict], event: dict, distance: float, rng: random.Random, tries: int = 1000) -> None:
    """Start and end positions, drawn uniformly until both objects stay ``EDGE`` inside the canvas and ``GAP``
    apart at every checked time. Only a mover's end differs from its start, and only along its direction."""
    for _ in range(tries):
        for i, o in enumerate(objects):
            lo, hi = o["r"] + EDGE, 1 - o["r"] - EDGE
            o["x0"], o["y0"] = round(rng.uniform(lo, hi), 4), round(rng.uniform(lo, hi), 4)
            o["x1"], o["y1"] = o["x0"], o["y0"]
            if event["type"] == "move" and i == event["object"]:
                dx, dy = _STEP[event["direction"]]
                key = "x" if dx else "y"
                sign = dx or dy
                start = rng.uniform(lo + distance, hi) if sign < 0 else rng.uniform(lo, hi - distance)
                o[f"{key}0"] = round(start, 4)
                o[f"{key}1"] = round(start + sign * distance, 4)
        if _layout_ok(objects):
            return
    raise RuntimeError(f"could not place a '{event['type']}' clip without overlap in {tries} tries")


def _layout_ok(objects: list[dict]) -> bool:
    for k in range(CHECK_TIMES):
        tau = k / (CHECK_TIMES - 1)
        points = [(_lerp(o, "x", tau), _lerp(o, "y", tau), o["r"]) for o in objects]
        if any(not (r + EDGE <= x <= 1 - r - EDGE and r + EDGE <= y <= 1 - r - EDGE) for x, y, r in points):
            return False
        (xa, ya, ra), (xb, yb, rb) = points
        if (xa - xb) ** 2 + (ya - yb) ** 2 < (ra + rb + GAP) ** 2:
            return False
    return True


def _lerp(obj: dict, key: str, tau: float) -> float:
    return obj[f"{key}0"] + (obj[f"{key}1"] - obj[f"{key}0"]) * tau


def clip_state(clip: dict, tau: float) -> list[dict]:
    """The objects visible at normalised time ``tau``: ``{"object", "x", "y", "r", "rgb", "colour", "shape"}``, where
    ``object`` indexes ``clip["objects"]`` and ``colour`` is the colour shown now (after a turn, the new one). An
    object is visible from its ``appear`` time on and shows its new colour from its ``turn`` time on."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"clips tau must be in [0, 1], got {tau!r}")
    state = []
    for i, o in enumerate(clip["objects"]):
        if tau < o["appear"]:
            continue
        turned = o["turn"] is not None and tau >= o["turn"]["at"]
        look = o["turn"] if turned else o
        state.append({"object": i, "x": _lerp(o, "x", tau), "y": _lerp(o, "y", tau), "r": o["r"],
                      "rgb": list(look["rgb"]), "colour": look["colour"], "shape": o["shape"]})
    return state


def render_clip(clip: dict, size: int | None = None, frames: int | None = None) -> list[Image.Image]:
    """The clip as ``frames`` RGB images of ``size x size`` (defaults: the clip's own frame count and canvas), each
    frame drawn by ``shapes.render_scene`` from ``clip_state`` at its time."""
    scene = {"canvas": clip["canvas"], "background": clip["background"], "noise": 0, "noise_seed": 0}
    return [render_scene({**scene, "objects": clip_state(clip, tau)}, size)
            for tau in frame_times(frames or clip["frames"])]


class ClipsDataset(GeneratedDataset):
    """``n`` clips of one split, rendered on the fly; a sample is ``{"video": (T, 3, H, W) float, "fps": float,
    "caption": str, "references": list[str], "scene": dict, "id": str}``.

    ``frames`` and ``size`` may differ from training at evaluation (temporal and spatial extrapolation): the clips
    stay the same, only their sampling changes. ``transform`` (an ``ImageTransform``) replaces plain normalisation
    for every frame; its augmentation is seeded from (seed, epoch, index) and redrawn identically for each frame,
    so a clip is cropped and lit one way throughout. Call ``set_epoch`` each epoch; ``fresh_each_epoch`` draws new
    training clips every epoch.
    """

    name = "clips"

    def __init__(
        self,
        n: int,
        split: str = "train",
        seed: int = 0,
        frames: int = 4,
        canvas: int = 64,
        size: int | None = None,
        colours=DEFAULT_COLOURS,
        shapes=DEFAULT_SHAPES,
        duration: float = 2.0,
        transform: ImageTransform | None = None,
        fresh_each_epoch: bool = False,
    ):
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"clips n must be a positive integer, got {n!r}")
        if size is not None and (not isinstance(size, int) or size <= 0 or size % 16):
            raise ValueError(f"clips size must be a positive multiple of 16, got {size!r}")
        self.clip_args = {"split": split, "frames": frames, "canvas": canvas, "colours": tuple(colours),
                          "shapes": tuple(shapes), "duration": duration}
        _check_config(split, frames, canvas, tuple(colours), tuple(shapes), duration)
        super().__init__(n, split, seed, fresh_each_epoch)
        self.size, self.transform = size or canvas, transform

    def scene(self, index: int) -> dict:
        return sample_clip(self.seed, self.stream_index(index), **self.clip_args)

    def __getitem__(self, index: int) -> dict:
        clip = self.scene(index)
        images = render_clip(clip, self.size)
        if self.transform is None:
            frames = [to_tensor(img) for img in images]  # each (3, size, size)
        elif self.transform.augment:  # the same rng state for every frame: one crop and one lighting per clip
            frames = [self.transform(img, sample_rng(self.seed, self.epoch, index, "clips")) for img in images]
        else:
            frames = [self.transform(img) for img in images]
        return {
            "video": torch.stack(frames),  # (T, 3, H, W)
            "fps": clip["fps"],
            "caption": clip["captions"][0],
            "references": list(clip["captions"]),
            "scene": clip,
            "id": f"clips/{self.split}/{self.seed}/{clip['index']}",
        }
