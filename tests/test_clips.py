import numpy as np
import pytest
import torch

from mmrope.data.clips import (
    CHECK_TIMES,
    DISPLACEMENT,
    EVENT_TIME,
    ClipsDataset,
    clip_captions,
    clip_state,
    clip_vocabulary_captions,
    frame_times,
    render_clip,
    sample_clip,
)
from mmrope.data.images import ImageTransform, sample_rng
from mmrope.data.shapes import COLOUR_RGB, EDGE, GAP, SHAPES, SPLITS, held_out_combos
from mmrope.eval.clips_scoring import aggregate_clips, parse_clip_caption, score_clip_caption, score_clip_captions


def clips_of(kind, count, split="train"):
    """The first ``count`` clips of the stream whose event is ``kind``."""
    found = [c for c in (sample_clip(0, i, split) for i in range(20 * count)) if c["event"]["type"] == kind]
    return found[:count]


def pixels(img):
    return np.asarray(img, dtype=np.float64)  # (H, W, 3)


def core_colour(img, obj, tau):
    """Mean colour of a small disk at the object's centre at ``tau``: inside every shape, away from its edge."""
    size = img.size[0]
    x, y = obj["x0"] + (obj["x1"] - obj["x0"]) * tau, obj["y0"] + (obj["y1"] - obj["y0"]) * tau
    cols, rows = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    disk = (cols - x * size) ** 2 + (rows - y * size) ** 2 <= (0.3 * obj["r"] * size) ** 2
    assert disk.sum() > 0
    return pixels(img)[disk].mean(axis=0)


def colour_centroid(img, rgb):
    """(x, y) in pixels of the pixels within 30 levels of ``rgb``; a still object of the same colour word adds the
    same pixels to every frame, so it damps a move but never reverses it."""
    rows, cols = np.nonzero(np.abs(pixels(img) - rgb).max(axis=2) <= 30)
    return cols.mean(), rows.mean()


def test_same_arguments_same_clip_and_pixels():
    for i in range(6):
        a, b = sample_clip(7, i), sample_clip(7, i)
        assert a == b
        for fa, fb in zip(render_clip(a), render_clip(b)):
            assert np.array_equal(pixels(fa), pixels(fb))


def test_frames_canvas_and_duration_only_change_the_showing():
    for i in range(10):
        a, b = sample_clip(3, i), sample_clip(3, i, frames=8, canvas=32, duration=4.0)
        assert (a["objects"], a["event"], a["captions"]) == (b["objects"], b["event"], b["captions"])
        assert (b["frames"], b["canvas"], b["duration"], b["fps"]) == (8, 32, 4.0, 1.75)


def test_seeds_and_splits_are_different_streams():
    def layout(split, seed=0):
        return [(sample_clip(seed, i, split)["captions"], sample_clip(seed, i, split)["objects"]) for i in range(20)]

    streams = [layout(s) for s in ("train", "val", "test")] + [layout("train", seed=1)]
    for k, a in enumerate(streams):
        for b in streams[k + 1:]:
            assert all(x != y for x, y in zip(a, b))


@pytest.mark.parametrize("split", SPLITS)
def test_held_out_combos_only_in_compositional_and_names_never_ambiguous(split):
    held_out = held_out_combos()
    for i in range(300):
        clip = sample_clip(0, i, split)
        initial = [(o["colour"], o["shape"]) for o in clip["objects"]]
        turned = [(o["turn"]["colour"], o["shape"]) for o in clip["objects"] if o["turn"]]
        if split == "compositional":
            assert any(c in held_out for c in initial)
            named = {tuple(o.values()) for o in parse_clip_caption(clip["captions"][0])["objects"]}
            assert named & held_out, clip["captions"]
        else:
            assert not (set(initial) | set(turned)) & held_out
        for tau in [k / (CHECK_TIMES - 1) for k in range(CHECK_TIMES)] + [o["turn"]["at"] for o in clip["objects"]
                                                                           if o["turn"]]:
            shown = [(o["colour"], o["shape"]) for o in clip_state(clip, tau)]
            assert len(set(shown)) == len(shown)


@pytest.mark.parametrize("split", ["train", "compositional"])
def test_one_event_and_a_layout_that_fits(split):
    kinds = set()
    for i in range(300):
        clip = sample_clip(0, i, split)
        event, objs = clip["event"], clip["objects"]
        assert len(objs) == 2 and clip["kind"] == "clip" and len(clip["captions"]) == 1
        kinds.add(event["type"])
        s = event["object"]
        moved = [o["x0"] != o["x1"] or o["y0"] != o["y1"] for o in objs]
        appears = [o["appear"] > 0 for o in objs]
        turns = [o["turn"] is not None for o in objs]
        expected = [k == s for k in range(2)]
        assert moved == (expected if event["type"] == "move" else [False, False])
        assert appears == (expected if event["type"] == "appear" else [False, False])
        assert turns == (expected if event["type"] == "turn" else [False, False])
        o = objs[s]
        if event["type"] == "move":
            dx, dy = o["x1"] - o["x0"], o["y1"] - o["y0"]
            along, across = {"left": (-dx, dy), "right": (dx, dy), "up": (-dy, dx), "down": (dy, dx)}[
                event["direction"]]
            assert DISPLACEMENT[0] - 1e-4 <= along <= DISPLACEMENT[1] + 1e-4 and across == 0
        elif event["type"] == "appear":
            assert event["after"] == 1 - s and EVENT_TIME[0] <= o["appear"] <= EVENT_TIME[1]
        else:
            assert EVENT_TIME[0] <= o["turn"]["at"] <= EVENT_TIME[1] and o["turn"]["colour"] == event["colour"]
            assert event["colour"] != o["colour"]
        for k in range(CHECK_TIMES):
            tau = k / (CHECK_TIMES - 1)
            shown = clip_state(clip, tau)
            for p in shown:
                assert p["r"] + EDGE <= p["x"] <= 1 - p["r"] - EDGE and p["r"] + EDGE <= p["y"] <= 1 - p["r"] - EDGE
            if len(shown) == 2:
                a, b = shown
                assert (a["x"] - b["x"]) ** 2 + (a["y"] - b["y"]) ** 2 >= (a["r"] + b["r"] + GAP) ** 2
    assert kinds == {"move", "appear", "turn"}


@pytest.mark.parametrize("split", SPLITS)
def test_reference_captions_score_one(split):
    clips = [sample_clip(0, i, split) for i in range(300)]
    for clip in clips:
        s = score_clip_caption(clip["captions"][0], clip)
        assert s["exact"] == s["attribute"] == s["event"] == 1.0, (clip["captions"], s)
    agg = score_clip_captions([c["captions"][0] for c in clips], clips)
    assert all(agg[k] == 1.0 for k in ("exact", "attribute", "event", "motion", "order", "change"))
    assert agg["n"] == 300


def test_captions_follow_the_templates():
    for clip in [sample_clip(0, i) for i in range(60)]:
        (caption,) = clip["captions"]
        event, objs = clip["event"], clip["objects"]
        name = f"{objs[event['object']]['colour']} {objs[event['object']]['shape']}"
        if event["type"] == "move":
            phrase = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}[event["direction"]]
            assert caption == f"the {name} moves {phrase}"
        elif event["type"] == "appear":
            first = objs[event["after"]]
            assert caption == f"a {name} appears after the {first['colour']} {first['shape']}"
        else:
            assert caption == f"the {name} turns {event['colour']}"


def toy_clip(kind):
    """A hand-made clip: red circle (object 0) on the left, blue square (object 1) on the right. Its event: the red
    circle moves right, the blue square appears after the red circle, or the red circle turns green."""
    def obj(colour, shape, x):
        return {"colour": colour, "shape": shape, "r": 0.1, "rgb": list(COLOUR_RGB[colour]), "x0": x, "y0": 0.5,
                "x1": x, "y1": 0.5, "appear": 0.0, "turn": None}

    objs = [obj("red", "circle", 0.2), obj("blue", "square", 0.8)]
    if kind == "move":
        objs[0]["x1"], objs[0]["y0"], objs[0]["y1"] = 0.55, 0.2, 0.2
        event = {"type": "move", "object": 0, "direction": "right"}
    elif kind == "appear":
        objs[1]["appear"] = 0.5
        event = {"type": "appear", "object": 1, "after": 0}
    else:
        objs[0]["turn"] = {"at": 0.5, "colour": "green", "rgb": list(COLOUR_RGB["green"])}
        event = {"type": "turn", "object": 0, "colour": "green"}
    clip = {"kind": "clip", "split": "train", "seed": 0, "index": 0, "canvas": 64, "frames": 4, "duration": 2.0,
            "fps": 2.0, "background": 40, "objects": objs, "event": event}
    clip["captions"] = clip_captions(clip)
    return clip


@pytest.mark.parametrize("kind,caption,expected", [
    ("move", "the red circle moves to the right", {"exact": 1, "attribute": 1, "event": 1}),
    ("move", "The red circle moves right.", {"exact": 0, "attribute": 1, "event": 1}),
    ("move", "red circle moves to right", {"exact": 0, "attribute": 1, "event": 1}),
    ("move", "the red circle moves to the left", {"exact": 0, "attribute": 1, "event": 0}),  # wrong direction
    ("move", "the red circle moves up", {"exact": 0, "attribute": 1, "event": 0}),  # wrong axis
    ("move", "the blue square moves to the right", {"exact": 0, "attribute": 1, "event": 0}),  # wrong object
    ("move", "the green circle moves to the right", {"exact": 0, "attribute": 0, "event": 0}),  # not in the clip
    ("move", "the red circle moves right of the green triangle", {"attribute": 0.5, "event": 0}),  # names a stranger
    ("move", "the red circle moves right and the blue square moves up", {"attribute": 1, "event": 0}),  # extra claim
    ("move", "the red circle moves right, the red circle moves to the right", {"attribute": 1, "event": 1}),
    ("move", "the red circle turns right", {"attribute": 1, "event": 0}),  # wrong event type
    ("move", "moves to the right", {"attribute": 0, "event": 0}),  # no object
    ("move", "", {"exact": 0, "attribute": 0, "event": 0}),
    ("appear", "a blue square appears after the red circle", {"exact": 1, "attribute": 1, "event": 1}),
    ("appear", "blue square appears after red circle", {"exact": 0, "attribute": 1, "event": 1}),
    ("appear", "the red circle appears before the blue square", {"attribute": 1, "event": 1}),
    ("appear", "after the red circle, a blue square appears", {"attribute": 1, "event": 1}),
    ("appear", "a red circle appears after the blue square", {"attribute": 1, "event": 0}),  # order swapped
    ("appear", "a blue square appears", {"attribute": 1, "event": 0}),  # no order
    ("appear", "a blue square appears after the green triangle", {"attribute": 0.5, "event": 0}),
    ("turn", "the red circle turns green", {"exact": 1, "attribute": 1, "event": 1}),
    ("turn", "Red circle turns into a green circle!", {"exact": 0, "attribute": 1, "event": 1}),
    ("turn", "the red circle turns yellow", {"attribute": 1, "event": 0}),  # wrong colour
    ("turn", "the blue square turns green", {"attribute": 1, "event": 0}),  # wrong object
    ("turn", "the green circle turns red", {"attribute": 0, "event": 0}),  # named by its final colour
])
def test_caption_scores(kind, caption, expected):
    s = score_clip_caption(caption, toy_clip(kind))
    for key, value in expected.items():
        assert s[key] == value, (key, s)
    per_type = {"move": "motion", "appear": "order", "turn": "change"}
    assert s[per_type[kind]] == s["event"]
    assert all(s[k] is None for t, k in per_type.items() if t != kind)


def test_parse_tolerates_word_order_variants():
    full = parse_clip_caption("the red circle moves to the right")
    for text in ("red circle moves right", "The red circle moves rightwards.", "a red circle moves to right"):
        parsed = parse_clip_caption(text)
        assert (parsed["objects"], parsed["events"]) == (full["objects"], full["events"])
    assert full == {"objects": [{"colour": "red", "shape": "circle"}],
                    "events": [{"type": "move", "object": 0, "direction": "right"}],
                    "text": "the red circle moves to the right"}
    appear = parse_clip_caption("blue square appears after green triangle")
    assert appear["events"] == [{"type": "appear", "object": 0, "after": 1}]
    turn = parse_clip_caption("red circle turns into a blue circle")
    assert turn["objects"] == [{"colour": "red", "shape": "circle"}]
    assert turn["events"] == [{"type": "turn", "object": 0, "colour": "blue"}]
    assert score_clip_caption(full, toy_clip("move"))["exact"] == 1.0  # a parsed caption keeps its text


def test_aggregate_averages_each_score_where_it_applies():
    move, appear = toy_clip("move"), toy_clip("appear")
    agg = score_clip_captions(["the red circle moves right", "a red circle appears after the blue square"],
                              [move, appear])
    assert agg["event"] == 0.5 and agg["motion"] == 1.0 and agg["order"] == 0.0 and agg["change"] is None
    assert agg["exact"] == 0.0 and agg["attribute"] == 1.0 and agg["n"] == 2
    assert aggregate_clips([])["event"] is None
    with pytest.raises(ValueError, match="2 predictions for 1 clips"):
        score_clip_captions(["a", "b"], [move])


def test_vocabulary_holds_every_caption_word():
    text = clip_vocabulary_captions(n=50)
    vocabulary = {w for line in text for w in line.split()}
    assert {*COLOUR_RGB, *SHAPES, "the", "a", "moves", "to", "appears", "after", "turns", "up", "down", "left",
            "right"} <= vocabulary
    assert len(text) == 51
    for split in SPLITS:
        for i in range(40):
            assert set(sample_clip(5, i, split)["captions"][0].split()) <= vocabulary


def test_render_frame_count_size_and_time_sampling():
    clip = sample_clip(0, 0)
    images = render_clip(clip)
    assert len(images) == 4 and all(img.size == (64, 64) and img.mode == "RGB" for img in images)
    assert [img.size for img in render_clip(clip, size=32, frames=6)] == [(32, 32)] * 6
    assert frame_times(4) == [0.0, 1 / 3, 2 / 3, 1.0] and frame_times(8)[-1] == 1.0
    for kind in ("move", "appear", "turn"):
        for clip in clips_of(kind, 5):
            four, eight = render_clip(clip), render_clip(clip, frames=8)
            assert np.array_equal(pixels(four[0]), pixels(eight[0]))
            assert np.array_equal(pixels(four[-1]), pixels(eight[-1]))
            for images in (four, eight):
                assert not np.array_equal(pixels(images[0]), pixels(images[-1]))  # the event shows


def test_appearing_object_is_absent_then_present():
    for clip in clips_of("appear", 10):
        late = clip["objects"][clip["event"]["object"]]
        for frames in (4, 8):
            for tau, img in zip(frame_times(frames), render_clip(clip, size=128, frames=frames)):
                expected = late["rgb"] if tau >= late["appear"] else [clip["background"]] * 3
                assert np.abs(core_colour(img, late, tau) - expected).max() < 1.0, (tau, late)


def test_colour_change_shows_in_the_pixels():
    for clip in clips_of("turn", 10):
        obj = clip["objects"][clip["event"]["object"]]
        images, times = render_clip(clip, size=128, frames=8), frame_times(8)
        for tau, img in zip(times, images):
            expected = obj["turn"]["rgb"] if tau >= obj["turn"]["at"] else obj["rgb"]
            assert np.abs(core_colour(img, obj, tau) - expected).max() < 1.0
        nearest = [min(COLOUR_RGB, key=lambda c: np.abs(core_colour(img, obj, t) - COLOUR_RGB[c]).sum())
                   for t, img in ((0.0, images[0]), (1.0, images[-1]))]
        assert nearest == [obj["colour"], clip["event"]["colour"]]


def test_moving_object_centroid_moves_the_right_way():
    for clip in clips_of("move", 16):
        event = clip["event"]
        mover, still = clip["objects"][event["object"]], clip["objects"][1 - event["object"]]
        images = render_clip(clip)
        (x0, y0), (x1, y1) = colour_centroid(images[0], mover["rgb"]), colour_centroid(images[-1], mover["rgb"])
        dx, dy = x1 - x0, y1 - y0
        along, across = {"left": (-dx, dy), "right": (dx, dy), "up": (-dy, dx), "down": (dy, dx)}[event["direction"]]
        assert along > 2.0 and abs(across) < 1.0, (event, along, across)
        if mover["colour"] != still["colour"]:  # the mask is the mover alone: it moves by the whole displacement
            distance = abs(mover["x1"] - mover["x0"] + mover["y1"] - mover["y0"]) * clip["canvas"]
            assert abs(along - distance) < 1.0


def test_dataset_samples():
    ds = ClipsDataset(6, seed=2)
    sample = ds[3]
    assert sample["video"].shape == (4, 3, 64, 64) and sample["video"].dtype == torch.float32
    assert sample["fps"] == 1.5 and sample["id"] == "clips/train/2/3"
    assert sample["caption"] == sample["references"][0] == sample_clip(2, 3)["captions"][0]
    assert sample["scene"] == sample_clip(2, 3)
    again = ClipsDataset(6, seed=2)[3]
    assert torch.equal(sample["video"], again["video"]) and sample["caption"] == again["caption"]
    longer = ClipsDataset(6, seed=2, frames=8, size=32, duration=4.0)[3]
    assert longer["video"].shape == (8, 3, 32, 32) and longer["fps"] == 1.75
    assert longer["caption"] == sample["caption"]
    val = ClipsDataset(2, split="val", seed=2)[1]
    assert val["id"] == "clips/val/2/1"
    assert len(ds) == 6 and ds.scene(3) == sample["scene"]
    with pytest.raises(IndexError):
        ds.scene(6)


def test_dataset_augments_every_frame_alike_and_fresh_epochs():
    transform = ImageTransform(mode="fixed", size=48, augment=True)
    ds = ClipsDataset(4, seed=1, transform=transform)
    ds.set_epoch(2)
    video = ds[1]["video"]
    expected = [transform(img, sample_rng(1, 2, 1, "clips")) for img in render_clip(ds.scene(1))]
    assert video.shape == (4, 3, 48, 48) and torch.equal(video, torch.stack(expected))
    ds.set_epoch(3)
    assert not torch.equal(ds[1]["video"], video)  # a new epoch, a new augmentation of the same clip
    fresh = ClipsDataset(4, seed=1, fresh_each_epoch=True)
    first = [fresh.scene(i)["captions"] for i in range(4)]
    fresh.set_epoch(1)
    assert [fresh.scene(i)["captions"] for i in range(4)] != first


@pytest.mark.parametrize("make,match", [
    (lambda: sample_clip(0, 0, frames=1), "frames"),
    (lambda: ClipsDataset(4, frames=1), "frames"),
    (lambda: render_clip(sample_clip(0, 0), frames=1), "frames"),
    (lambda: sample_clip(0, 0, split="dev"), "split"),
    (lambda: ClipsDataset(4, split="dev"), "split"),
    (lambda: ClipsDataset(0), " n "),
    (lambda: ClipsDataset(-3), " n "),
    (lambda: ClipsDataset(4, size=50), "size"),
    (lambda: sample_clip(0, 0, canvas=50), "canvas"),
    (lambda: sample_clip(0, 0, duration=0), "duration"),
    (lambda: sample_clip(0, 0, colours=("red", "pink")), "colours"),
    (lambda: sample_clip(0, 0, colours=("red", "green"), shapes=("circle", "square", "triangle")), "colours x"),
    (lambda: clip_state(sample_clip(0, 0), 1.5), "tau"),
])
def test_bad_arguments_give_one_line_value_errors(make, match):
    with pytest.raises(ValueError, match=match) as info:
        make()
    assert "\n" not in str(info.value)
