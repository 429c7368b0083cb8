"""The "shapes" benchmark: procedurally rendered scenes whose captions are only right if the model reads positions.

Each scene is sampled from (split, seed, index) with its own ``random.Random`` and kept as a small JSON-friendly
dict in normalised coordinates (x right, y down, both in [0, 1]), so the same scene renders at any canvas size.
Captions come from fixed templates; ``mmrope.eval.shapes_scoring`` parses them back.

Levels (``level``):
    1  one object and its place on a 3 x 3 grid:        "red circle in the top left", "blue square on the right"
    2  two objects and one relation, which axis clearly  "red circle left of blue square"
       dominates (offset >= 2x the other, no overlap);   (either object may be named first; "right of", "above"
       the object named first is random                  and "below" are the other relations)
    3  3 to ``max_objects`` objects with sizes, a count  "three shapes: small red circle above large blue square,
       and a chain of relations between them             large blue square left of small green triangle"

Options that isolate one skill: ``colours`` and ``shapes`` (the scene vocabulary; two colours and one shape make
naming trivial, so a run's budget goes to the relation), ``inside_cells`` (level 1: the object lies wholly inside its
place's cell of the 3 x 3 grid, so on a canvas of 3 x 3 patches no patch holds part of another cell's object and a
patch's content alone never tells its place), ``caption_order="reading"`` (levels 2-3: the leftmost, or topmost, object
is named first, so every relation reads "left of" or "above" and the first word is no coin flip;
``caption_order="place_first"`` at level 1 says the place before the object: "in the top left is a red circle").

Splits: "train", "val" and "test" are disjoint random streams over the same distribution (in-distribution).
"compositional" holds colour x shape combinations that never appear in the other splits: with the default colours
(red, green, blue, yellow) and shapes (circle, square, triangle) these are the *red circle*, *green square* and *blue
triangle* (shape i with colour i, see ``held_out_combos``); each compositional scene holds at least one of them.
Within a scene every object has a distinct colour x shape, so a caption names each object unambiguously.
"""

import math
import random
from itertools import pairwise
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

COLOUR_RGB = {
    "red": (220, 50, 47),
    "green": (60, 180, 75),
    "blue": (50, 100, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 70, 200),
    "orange": (245, 130, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
DEFAULT_COLOURS = ("red", "green", "blue", "yellow")
DEFAULT_SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
SPLITS = ("train", "val", "test", "compositional")
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}

# 3 x 3 grid of places (level 1): the place's name and how the caption says it
ROWS, COLS = ("top", "middle", "bottom"), ("left", "centre", "right")
PLACE_PHRASES = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "centre": "in the centre", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}

# geometry, in units of the canvas side
RADIUS = (0.09, 0.13)  # levels 1 and 2: half the side of an object's bounding box
SIZE_RADIUS = {"small": (0.07, 0.09), "large": (0.115, 0.135)}  # level 3: sizes a caption can name
EDGE = 0.02  # free margin between an object and the canvas edge
GAP = 0.03  # free margin between two objects
CELL_MARGIN = 0.06  # level 1: the centre stays this far inside its grid cell, so the place is never borderline
CELL_EDGE = 0.01  # level 1 with inside_cells: the whole object stays this far inside its cell
CAPTION_ORDERS = ("random", "reading", "place_first")
DOMINANCE = 2.0  # a relation's axis offset is at least this many times the other axis's offset
BACKGROUND_GREY = (24, 64)  # dark grey, so every colour stands out
NOISE_AMPLITUDE = 12  # "noisy" background: uniform noise of +-12 grey levels
COLOUR_JITTER = 12  # each object's RGB varies by up to this much per channel, a shade, never another colour word
SUPERSAMPLE = 4  # render at 4x and average 4x4 blocks: anti-aliased edges


def vocabulary_captions(seed: int = 0, scenes_per_level: int = 50) -> list[str]:
    """Text that holds every word a shapes caption can use, to train a word tokenizer on: each colour, shape, size,
    relation, place and count word, plus real captions of every level for the connecting words and punctuation."""
    words = [*COLOUR_RGB, *SHAPES, *SIZES, *RELATIONS, *PLACE_PHRASES.values(), *COUNT_WORDS.values()]
    captions = [c for level in (1, 2, 3) for i in range(scenes_per_level)
                for c in sample_scene(seed, i, level=level, max_objects=6)["captions"]]
    return [" ".join(words)] + captions


def held_out_combos(colours=DEFAULT_COLOURS, shapes=DEFAULT_SHAPES) -> set[tuple[str, str]]:
    """Colour x shape pairs reserved for the compositional split: shape i with colour i (mod the colour count)."""
    return {(colours[i % len(colours)], s) for i, s in enumerate(shapes)}


def place_name(row: str, col: str) -> str:
    """A grid cell's name: "top left", "top", "left", "centre", ... (the middle row and centre column go unsaid)."""
    return " ".join(p for p in (row, col) if p not in ("middle", "centre")) or "centre"


def relation_between(a: dict, b: dict) -> str | None:
    """How ``a`` stands to ``b`` ("a is left of b"), or None when neither axis dominates by ``DOMINANCE``."""
    dx, dy = b["x"] - a["x"], b["y"] - a["y"]
    if abs(dx) >= DOMINANCE * abs(dy) and dx != 0:
        return "left of" if dx > 0 else "right of"
    if abs(dy) >= DOMINANCE * abs(dx) and dy != 0:
        return "above" if dy > 0 else "below"
    return None


def describe(obj: dict, with_size: bool) -> str:
    words = ([obj["size"]] if with_size else []) + [obj["colour"], obj["shape"]]
    return " ".join(words)


def scene_captions(scene: dict, order: str = "random") -> list[str]:
    """The scene's caption, then the same facts with every relation said the other way round. ``order="reading"``
    says each relation the way round that reads "left of" or "above" first (its other way second)."""
    objs, level = scene["objects"], scene["level"]
    if level == 1:
        o = objs[0]
        place_first = f"{PLACE_PHRASES[o['place']]} is a {describe(o, False)}"
        return [place_first] if order == "place_first" else [f"{describe(o, False)} {PLACE_PHRASES[o['place']]}"]

    def clauses(flip: bool) -> list[str]:
        out = []
        for r in scene["relations"]:
            a, rel, b = objs[r["subject"]], r["relation"], objs[r["object"]]
            a, rel, b = (b, INVERSE[rel], a) if flip else (a, rel, b)
            out.append(f"{describe(a, level >= 3)} {rel} {describe(b, level >= 3)}")
        return out

    prefix = f"{COUNT_WORDS[len(objs)]} shapes: " if level >= 3 else ""
    captions = [prefix + ", ".join(clauses(False)), prefix + ", ".join(clauses(True))]
    if order == "reading" and scene["relations"][0]["relation"] in ("right of", "below"):
        captions.reverse()  # the first relation is said left-to-right or top-to-bottom
    return captions


def check_scene(scene, where: str) -> dict:
    """A scene read from a data file (a ``metadata.jsonl`` row, a shard sample's JSON), checked for what scoring
    reads from it: one line naming ``where`` when it is not a shapes scene, rather than a traceback at validation."""

    def number(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and math.isfinite(v)

    def problem() -> str | None:
        if not isinstance(scene, dict):
            return "a JSON object"
        if scene.get("kind") is not None:
            return "no 'kind': clips are not read from files"
        level, objects = scene.get("level"), scene.get("objects")
        if level not in (1, 2, 3) or isinstance(level, bool):
            return "'level' 1, 2 or 3"
        if not isinstance(objects, list) or not objects or not all(
                isinstance(o, dict) and isinstance(o.get("colour"), str) and isinstance(o.get("shape"), str)
                for o in objects):
            return "'objects' a non-empty list of objects with 'colour' and 'shape' names"
        if level == 1 and not isinstance(objects[0].get("place"), str):
            return "at level 1 a 'place' name for the object"
        if level > 1 and not all(number(o.get("x")) and number(o.get("y")) for o in objects):
            return "at levels 2 and 3 numbers 'x' and 'y' for every object"
        if level > 1 and not isinstance(scene.get("relations"), list):
            return "at levels 2 and 3 a list of 'relations'"
        return None

    wrong = problem()
    if wrong is not None:
        shown = repr(scene) if len(repr(scene)) <= 60 else repr(scene)[:57] + "..."
        raise ValueError(f"{where}: 'scene' is not a shapes scene as `mmrope data shapes` writes it (expected "
                         f"{wrong}), got {shown}")
    return scene


def _check_config(level, split, max_objects, colours, shapes, background, canvas, caption_order="random"):
    if level not in (1, 2, 3):
        raise ValueError(f"shapes level must be 1, 2 or 3, got {level!r}")
    if caption_order not in CAPTION_ORDERS:
        raise ValueError(f"shapes caption_order must be one of {CAPTION_ORDERS}, got {caption_order!r}")
    if split not in SPLITS:
        raise ValueError(f"shapes split must be one of {SPLITS}, got {split!r}")
    if background not in ("plain", "noisy"):
        raise ValueError(f"shapes background must be 'plain' or 'noisy', got {background!r}")
    if not isinstance(canvas, int) or canvas <= 0 or canvas % 16:
        raise ValueError(f"shapes canvas must be a positive multiple of 16 (32, 48, 64, 96, 128), got {canvas!r}")
    for name, given, known in (("colours", colours, COLOUR_RGB), ("shapes", shapes, SHAPES)):
        unknown = [c for c in given if c not in known]
        if unknown or len(set(given)) != len(given) or not given:
            raise ValueError(f"shapes {name} must be distinct names from {list(known)}, got {list(given)}")
    usable = len(colours) * len(shapes) - len(held_out_combos(colours, shapes))
    if level == 3 and not 3 <= max_objects <= min(6, usable):
        raise ValueError(f"shapes max_objects must be in 3..{min(6, usable)} for level 3, got {max_objects}")
    if usable < 2:
        raise ValueError(f"shapes needs more colours x shapes than {list(colours)} x {list(shapes)}")


def sample_scene(
    seed: int,
    index: int,
    split: str = "train",
    level: int = 2,
    max_objects: int = 4,
    colours=DEFAULT_COLOURS,
    shapes=DEFAULT_SHAPES,
    background: Literal["plain", "noisy"] = "plain",
    canvas: int = 64,
    inside_cells: bool = False,
    caption_order: str = "random",
) -> dict:
    """Scene ``index`` of the ``split`` stream for ``seed``: the same arguments always give the same scene (the
    options are those of the module docstring)."""
    colours, shapes = tuple(colours), tuple(shapes)
    _check_config(level, split, max_objects, colours, shapes, background, canvas, caption_order)
    rng = random.Random(f"shapes:{split}:{seed}:{index}")  # its own stream: never the global RNG

    grey = rng.randint(*BACKGROUND_GREY)
    noise_seed = rng.getrandbits(31)  # drawn even for plain backgrounds, so the layout is the same for both
    n = {1: 1, 2: 2}.get(level) or rng.randint(3, max_objects)

    held_out = held_out_combos(colours, shapes)
    seen = sorted({(c, s) for c in colours for s in shapes} - held_out)
    if split == "compositional":
        first = rng.choice(sorted(held_out))
        combos = [first] + rng.sample([c for c in seen + sorted(held_out) if c != first], n - 1)
        rng.shuffle(combos)
    else:
        combos = rng.sample(seen, n)

    objects = []
    for colour, shape in combos:
        obj = {"colour": colour, "shape": shape}
        if level >= 3:
            obj["size"] = rng.choice(SIZES)
            obj["r"] = round(rng.uniform(*SIZE_RADIUS[obj["size"]]), 4)
        else:
            obj["r"] = round(rng.uniform(*RADIUS), 4)
        obj["rgb"] = [max(0, min(255, v + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for v in COLOUR_RGB[colour]]
        objects.append(obj)

    relations = []
    if level == 1:
        obj = objects[0]
        row, col = rng.randrange(3), rng.randrange(3)
        for key, cell in (("x", col), ("y", row)):
            if inside_cells:  # the same room in every cell, so a cell's content never tells which cell it is
                lo, hi = cell / 3 + obj["r"] + CELL_EDGE, (cell + 1) / 3 - obj["r"] - CELL_EDGE
            else:
                lo = max(cell / 3 + CELL_MARGIN, obj["r"] + EDGE)
                hi = min((cell + 1) / 3 - CELL_MARGIN, 1 - obj["r"] - EDGE)
            obj[key] = round(rng.uniform(lo, hi), 4)
        obj["place"] = place_name(ROWS[row], COLS[col])
    else:
        relations = _place_chain(objects, rng)

    scene = {
        "level": level, "split": split, "seed": seed, "index": index, "canvas": canvas,
        "background": grey, "noise": NOISE_AMPLITUDE if background == "noisy" else 0, "noise_seed": noise_seed,
        "objects": objects, "relations": relations,
    }
    scene["captions"] = scene_captions(scene, caption_order)
    return scene


def _place_chain(objects: list[dict], rng: random.Random, tries: int = 1000, tries_each: int = 100) -> list[dict]:
    """Positions for the objects, one after another: each is drawn uniformly until it overlaps no earlier one and
    stands in a clear relation to the one before it. Returns those relations, object i to object i + 1."""
    for _ in range(tries):
        for k, o in enumerate(objects):
            for _ in range(tries_each):
                o["x"] = round(rng.uniform(o["r"] + EDGE, 1 - o["r"] - EDGE), 4)
                o["y"] = round(rng.uniform(o["r"] + EDGE, 1 - o["r"] - EDGE), 4)
                clear = all((o["x"] - p["x"]) ** 2 + (o["y"] - p["y"]) ** 2 >= (o["r"] + p["r"] + GAP) ** 2
                            for p in objects[:k])
                if clear and (k == 0 or relation_between(objects[k - 1], o) is not None):
                    break
            else:
                break  # this object found no room: start the scene's layout again
        else:
            rels = [relation_between(a, b) for a, b in pairwise(objects)]
            return [{"subject": i, "relation": r, "object": i + 1} for i, r in enumerate(rels)]
    raise RuntimeError(f"could not place {len(objects)} shapes without overlap in {tries} tries")


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices for ``shape`` in a box of half-side ``r`` (None for a circle); sizes chosen for similar areas."""
    if shape == "square":
        h = 0.85 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # equilateral, pointing up, centred on its bounding box
        R = 1.15 * r
        top, base = cy - 0.75 * R, cy + 0.75 * R
        return [(cx, top), (cx + 0.866 * R, base), (cx - 0.866 * R, base)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    return None


def render_scene(scene: dict, size: int | None = None, scale_objects: bool = True) -> Image.Image:
    """The scene as a ``size x size`` RGB image (default: its own canvas).

    ``scale_objects=True`` keeps objects the same fraction of the canvas at every size ("objects scaled");
    False keeps them the pixel size they have on the scene's own canvas ("objects same size"). Positions are
    always fractions of the canvas.
    """
    size = size or scene["canvas"]
    S = size * SUPERSAMPLE
    unit = (size if scale_objects else scene["canvas"]) * SUPERSAMPLE  # pixels per unit of radius
    grey = scene["background"]
    img = Image.new("RGB", (S, S), (grey, grey, grey))
    mask = Image.new("L", (S, S), 0)  # where objects are, so noise stays on the background
    draw, mask_draw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    for o in scene["objects"]:
        cx, cy, r = o["x"] * S, o["y"] * S, o["r"] * unit
        points = _polygon(o["shape"], cx, cy, r)
        for d, fill in ((draw, tuple(o["rgb"])), (mask_draw, 255)):
            if points is None:
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            else:
                d.polygon(points, fill=fill)
    img, mask = img.reduce(SUPERSAMPLE), mask.reduce(SUPERSAMPLE)
    if scene["noise"]:
        noise_rng = random.Random(f"noise:{scene['noise_seed']}:{size}")
        u = np.frombuffer(noise_rng.randbytes(size * size), dtype=np.uint8).reshape(size, size)
        noise = (u.astype(np.float32) / 255.0 * 2.0 - 1.0) * scene["noise"]  # (H, W) in [-amp, amp]
        background = 1.0 - np.asarray(mask, dtype=np.float32) / 255.0  # (H, W)
        pixels = np.asarray(img, dtype=np.float32) + (noise * background)[..., None]  # (H, W, 3)
        img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return img


# How a scene is shown at a size other than its own canvas: three questions, asked one at a time
SIZE_PROTOCOLS = {
    "scaled": "the scene redrawn on the new canvas, objects scaled with it: a new resolution of the same picture",
    "same_pixels": "the scene redrawn on the new canvas, objects keeping their pixel size: more room, same objects",
    "anchored": "the training canvas as it was, in the top-left corner of the new one, the rest background: the "
                "same patches at the same indices, with more canvas beside and below them",
}


def render_at(scene: dict, size: int | None = None, protocol: str = "scaled") -> Image.Image:
    """The scene at ``size`` under one of :data:`SIZE_PROTOCOLS`. Its caption stays true under each: places and
    relations are read on the scene's own canvas, which "anchored" keeps whole in the corner."""
    if protocol not in SIZE_PROTOCOLS:
        raise ValueError(f"size protocol {protocol!r} is unknown: expected one of {', '.join(SIZE_PROTOCOLS)}")
    size = size or scene["canvas"]
    if protocol != "anchored" or size == scene["canvas"]:
        return render_scene(scene, size, scale_objects=protocol != "same_pixels")
    if size < scene["canvas"]:
        raise ValueError(f"an anchored scene needs a canvas at least its own ({scene['canvas']} px), got {size}")
    # the rest of the canvas: the scene's background (and noise) with no objects, then the scene in its corner
    canvas = render_scene({**scene, "objects": []}, size)
    canvas.paste(render_scene(scene), (0, 0))
    return canvas
