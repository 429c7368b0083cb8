import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrope.cli.data import register
from mmrope.data.captions import CaptionDataset, load_imagefolder
from mmrope.data.images import ImageTransform, to_tensor
from mmrope.data.shapes import (
    COUNT_WORDS,
    DOMINANCE,
    INVERSE,
    PLACE_PHRASES,
    held_out_combos,
    render_scene,
    sample_scene,
)
from mmrope.data.shapes_dataset import ShapesDataset


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def foreground(img, scene):
    """Pixels clearly brighter than the background: the objects."""
    return int((np.asarray(img).max(axis=2) > scene["background"] + 40).sum())


@pytest.mark.parametrize("level", [1, 2, 3])
def test_same_seed_same_bytes_and_captions(level):
    for i in range(5):
        a = sample_scene(7, i, level=level, background="noisy")
        b = sample_scene(7, i, level=level, background="noisy")
        assert a == b
        assert png_bytes(render_scene(a)) == png_bytes(render_scene(b))
    first = ShapesDataset(4, seed=7, level=level)[3]
    again = ShapesDataset(4, seed=7, level=level)[3]
    assert first["caption"] == again["caption"] and torch.equal(first["image"], again["image"])


def test_seeds_and_splits_are_different_streams():
    train = [sample_scene(0, i)["captions"][0] for i in range(20)]
    assert train != [sample_scene(1, i)["captions"][0] for i in range(20)]
    assert train != [sample_scene(0, i, split="val")["captions"][0] for i in range(20)]
    a, b = sample_scene(0, 0), sample_scene(0, 0, split="test")
    assert [(o["x"], o["y"]) for o in a["objects"]] != [(o["x"], o["y"]) for o in b["objects"]]


def test_level1_place_matches_position():
    places = set()
    for i in range(300):
        scene = sample_scene(0, i, level=1)
        (obj,) = scene["objects"]
        row = ("top", "", "bottom")[int(obj["y"] * 3)]
        col = ("left", "", "right")[int(obj["x"] * 3)]
        assert obj["place"] == (" ".join(p for p in (row, col) if p) or "centre")
        assert scene["captions"] == [f"{obj['colour']} {obj['shape']} {PLACE_PHRASES[obj['place']]}"]
        places.add(obj["place"])
    assert places == set(PLACE_PHRASES)


def test_level2_relation_is_unambiguous_and_either_object_comes_first():
    relations = set()
    for i in range(400):
        scene = sample_scene(0, i, level=2)
        a, b = scene["objects"]
        (r,) = scene["relations"]
        dx, dy = b["x"] - a["x"], b["y"] - a["y"]
        major, minor = (dx, dy) if r["relation"] in ("left of", "right of") else (dy, dx)
        assert abs(major) >= DOMINANCE * abs(minor)
        assert (major > 0) == (r["relation"] in ("left of", "above"))
        assert (dx**2 + dy**2) ** 0.5 > a["r"] + b["r"]  # no overlap
        assert (a["colour"], a["shape"]) != (b["colour"], b["shape"])
        na, nb = f"{a['colour']} {a['shape']}", f"{b['colour']} {b['shape']}"
        assert scene["captions"] == [f"{na} {r['relation']} {nb}", f"{nb} {INVERSE[r['relation']]} {na}"]
        relations.add(r["relation"])
    assert relations == set(INVERSE)


def test_level3_counts_sizes_and_chain():
    counts = set()
    for i in range(100):
        scene = sample_scene(0, i, level=3, max_objects=5)
        n = len(scene["objects"])
        counts.add(n)
        assert scene["captions"][0].startswith(f"{COUNT_WORDS[n]} shapes: ")
        assert len(scene["relations"]) == n - 1
        assert all(o["size"] in ("small", "large") for o in scene["objects"])
        assert len({(o["colour"], o["shape"]) for o in scene["objects"]}) == n
    assert counts == {3, 4, 5}


def test_compositional_split_holds_out_combinations():
    held = held_out_combos()
    assert held == {("red", "circle"), ("green", "square"), ("blue", "triangle")}
    for split in ("train", "val", "test"):
        for level in (1, 2, 3):
            for i in range(150):
                combos = {(o["colour"], o["shape"]) for o in sample_scene(0, i, split, level)["objects"]}
                assert not combos & held
    for i in range(150):
        combos = {(o["colour"], o["shape"]) for o in sample_scene(0, i, "compositional", 2)["objects"]}
        assert combos & held
    seen_first = {sample_scene(0, i, "compositional", 2)["objects"][0]["colour"] for i in range(50)}
    assert len(seen_first) > 1  # the held-out object is not always the one named first


def test_scene_renders_at_other_sizes_scaled_or_same_size():
    scene = sample_scene(3, 1, level=2)
    base = render_scene(scene)
    assert base.size == (64, 64)
    for size in (32, 96, 128):
        assert render_scene(scene, size).size == (size, size)
    fg = foreground(base, scene)
    assert foreground(render_scene(scene, 128), scene) == pytest.approx(4 * fg, rel=0.1)  # objects scaled
    assert foreground(render_scene(scene, 128, scale_objects=False), scene) == pytest.approx(fg, rel=0.1)


def test_rendering_is_antialiased_and_noise_stays_off_the_objects():
    scene = sample_scene(0, 2, level=2)
    img = np.asarray(render_scene(scene))
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 6  # edge pixels blend shape and background
    noisy = {**scene, "noise": 12}
    a, b = np.asarray(render_scene(noisy)).astype(int), img.astype(int)
    diff = np.abs(a - b).max(axis=2)
    grey = scene["background"]
    background = (np.abs(b - grey).max(axis=2) == 0)
    centres = np.zeros_like(background)
    for o in scene["objects"]:  # pixels near each object's centre, inside every shape
        cx, cy, r = o["x"] * 64, o["y"] * 64, o["r"] * 64 * 0.25
        centres[int(cy - r):int(cy + r) + 1, int(cx - r):int(cx + r) + 1] = True
    assert background.sum() > 2000 and centres.sum() >= 8
    assert diff[background].mean() > 3 and diff[centres].max() == 0


def test_scene_survives_json_and_renders_the_same():
    scene = sample_scene(5, 9, level=3, background="noisy")
    loaded = json.loads(json.dumps(scene))
    assert loaded == scene
    assert png_bytes(render_scene(loaded, 96)) == png_bytes(render_scene(scene, 96))


def test_dataset_sample():
    ds = ShapesDataset(10, split="val", seed=1, level=2, canvas=48)
    s = ds[4]
    assert set(s) == {"image", "caption", "references", "scene", "id"}
    assert s["image"].shape == (3, 48, 48) and s["image"].dtype == torch.float32
    assert s["caption"] == s["references"][0] and len(s["references"]) == 2
    assert torch.equal(s["image"], to_tensor(render_scene(s["scene"])))
    assert json.loads(json.dumps(s["scene"])) == s["scene"]
    assert ShapesDataset(10, level=2, size=128)[0]["image"].shape == (3, 128, 128)
    with pytest.raises(IndexError):
        ds[10]


def test_dataset_augmentation_follows_seed_and_epoch():
    t = ImageTransform("native", augment=True)
    ds = ShapesDataset(4, transform=t)
    a = ds[1]["image"]
    assert torch.equal(a, ShapesDataset(4, transform=t)[1]["image"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[1]["image"])
    fresh = ShapesDataset(4, fresh_each_epoch=True)
    first = fresh[0]["caption"]
    fresh.set_epoch(1)
    assert fresh[0]["caption"] != first


@pytest.mark.parametrize("kwargs,match", [
    ({"canvas": 50}, "canvas must be a positive multiple of 16"),
    ({"level": 4}, "level must be 1, 2 or 3"),
    ({"split": "holdout"}, "split must be one of"),
    ({"background": "stripes"}, "background must be 'plain' or 'noisy'"),
    ({"colours": ("red", "pink")}, "colours must be distinct names"),
    ({"level": 3, "max_objects": 9}, "max_objects must be in 3.."),
])
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesDataset(4, **kwargs)


def test_generator_still_makes_the_shipped_samples():
    # data/samples holds scenes and PNGs made by data/samples/make_samples.py: a change here changes every dataset
    samples = Path(__file__).resolve().parents[1] / "data" / "samples"
    rows = [json.loads(line) for line in (samples / "metadata.jsonl").read_text().splitlines()]
    scenes = [r["scene"] for r in rows if "scene" in r]
    assert len(scenes) == 3
    for row in rows[:3]:
        scene = row["scene"]
        background = "noisy" if scene["noise"] else "plain"
        again = sample_scene(scene["seed"], scene["index"], scene["split"], scene["level"],
                             background=background, canvas=scene["canvas"])
        assert again == scene and row["text"] == scene["captions"]
        buf = io.BytesIO()
        render_scene(again).save(buf, format="PNG", compress_level=9)
        assert buf.getvalue() == (samples / row["file_name"]).read_bytes()


def export(out, *extra):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "shapes", "--out", str(out), "--n", "12", *extra])
    args.func(args)


def test_export_is_byte_identical_and_reads_back(tmp_path):
    export(tmp_path / "a", "--level", "2", "--seed", "3")
    export(tmp_path / "b", "--level", "2", "--seed", "3")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 13
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()

    records = load_imagefolder(tmp_path / "a")
    assert len(records) == 12
    assert records[5].scene == sample_scene(3, 5, level=2) and records[5].captions == records[5].scene["captions"]
    sample = CaptionDataset(records, train=False)[5]
    assert torch.equal(sample["image"], ShapesDataset(12, seed=3, level=2)[5]["image"])
    assert sample["caption"] == ShapesDataset(12, seed=3, level=2)[5]["caption"]


def test_export_over_an_earlier_one_is_refused_unless_overwrite(tmp_path):
    """An existing export is never overwritten silently: one line naming what would be; --overwrite replaces
    exactly the files the export writes and leaves the rest."""
    export(tmp_path / "a", "--seed", "1")
    (tmp_path / "a/notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    with pytest.raises(ValueError) as e:
        export(tmp_path / "a", "--seed", "2")
    assert str(e.value) == (f"{tmp_path / 'a'}: holds metadata.jsonl and 12 images (images/000000.png ... "
                            "images/000011.png), which this export would overwrite: choose another --out, or pass "
                            "--overwrite")
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == before
    export(tmp_path / "a", "--seed", "2", "--overwrite")
    assert load_imagefolder(tmp_path / "a")[0].scene == sample_scene(2, 0, level=2)
    assert (tmp_path / "a/notes.txt").read_text() == "mine"


# --- options that isolate one skill --------------------------------------------------------------------------------

def test_inside_cells_keeps_each_object_wholly_in_its_place_cell():
    """With a canvas of 3 patches a side each cell is one patch: every object's box (and its drawn pixels) stays in
    the cell its caption names, so no patch's content tells another cell's place."""
    from mmrope.data.shapes import COLS, ROWS, place_name

    cells = {place_name(row, col): (r, c) for r, row in enumerate(ROWS) for c, col in enumerate(COLS)}
    for i in range(200):
        s = sample_scene(0, i, "train", level=1, canvas=48, inside_cells=True)
        o = s["objects"][0]
        r_i, c_i = cells[o["place"]]
        assert c_i / 3 < o["x"] - o["r"] and o["x"] + o["r"] < (c_i + 1) / 3
        assert r_i / 3 < o["y"] - o["r"] and o["y"] + o["r"] < (r_i + 1) / 3
        pixels = np.asarray(render_scene(s)).max(axis=2) > s["background"] + 40
        ys, xs = np.nonzero(pixels)
        assert xs.min() >= 16 * c_i and xs.max() < 16 * (c_i + 1) and ys.min() >= 16 * r_i and ys.max() < 16 * (r_i + 1)


def test_reading_order_names_the_leftmost_or_topmost_first():
    for i in range(100):
        s = sample_scene(0, i, "train", level=2, caption_order="reading")
        assert " left of " in s["captions"][0] or " above " in s["captions"][0]
        # the same facts, the other way round, stay a reference
        random_order = sample_scene(0, i, "train", level=2)
        assert sorted(s["captions"]) == sorted(random_order["captions"])


def test_colours_and_shapes_narrow_the_scene_vocabulary():
    for i in range(50):
        s = sample_scene(0, i, "train", level=2, colours=("red", "green", "blue"), shapes=("square",))
        assert {o["shape"] for o in s["objects"]} == {"square"}
        # red is square's held-out colour: only green and blue squares in the training split
        assert sorted(o["colour"] for o in s["objects"]) == ["blue", "green"]
    with pytest.raises(ValueError, match="shapes colours must be distinct names"):
        sample_scene(0, 0, level=2, colours=("red", "mauve"))


def test_mixed_levels_draw_each_scene_s_level_from_its_index():
    data = ShapesDataset(200, split="train", seed=3, level=2, mix_levels=(1, 2), fresh_each_epoch=True)
    levels = [data.scene(i)["level"] for i in range(200)]
    assert 60 < levels.count(1) < 140 and set(levels) == {1, 2}
    again = ShapesDataset(200, split="train", seed=3, level=2, mix_levels=(1, 2), fresh_each_epoch=True)
    assert [again.scene(i)["level"] for i in range(200)] == levels


def test_size_protocols():
    from mmrope.data.shapes import SIZE_PROTOCOLS, render_at

    s = sample_scene(0, 5, "test", level=1, canvas=48, inside_cells=True)
    own = np.asarray(render_scene(s))
    anchored = np.asarray(render_at(s, 96, "anchored"))
    assert anchored.shape == (96, 96, 3) and np.array_equal(anchored[:48, :48], own)
    assert (anchored[48:] == s["background"]).all() and (anchored[:, 48:] == s["background"]).all()
    assert foreground(render_at(s, 96, "same_pixels"), s) == pytest.approx(foreground(own, s), rel=0.15)
    assert foreground(render_at(s, 96, "scaled"), s) == pytest.approx(4 * foreground(own, s), rel=0.15)
    assert set(SIZE_PROTOCOLS) == {"scaled", "same_pixels", "anchored"}
    with pytest.raises(ValueError, match="size protocol 'zoomed' is unknown"):
        render_at(s, 96, "zoomed")


def test_training_on_several_sizes_draws_each_scene_s_canvas_from_its_index():
    data = ShapesDataset(60, level=1, canvas=48, sizes=(32, 48, 64), fresh_each_epoch=True)
    sizes = [data[i]["image"].shape[-1] for i in range(60)]
    assert set(sizes) == {32, 48, 64} and sizes == [data[i]["image"].shape[-1] for i in range(60)]
    data.set_epoch(1)  # new scenes, new sizes
    assert [data[i]["image"].shape[-1] for i in range(60)] != sizes
    with pytest.raises(ValueError, match="shapes sizes must be positive multiples of 16"):
        ShapesDataset(4, level=1, sizes=(40,))
