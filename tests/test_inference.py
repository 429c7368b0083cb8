"""Inference as a user meets it: ``mmrope caption``, ``eval`` and ``export`` run as commands on real files; each bad
input refused in one line that names it while the good ones are still captioned; odd but valid images captioned;
an exported folder that gives back the checkpoint's weights and captions; ``mmrope.load`` from Python.

The commands run as subprocesses (a few seconds of imports each), so several checks share one invocation."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_writers import frames_to_folder
from PIL import Image

import mmrope
from mmrope.data.images import ImageError
from mmrope.inference import load

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data/samples"
SAMPLE_IMAGES = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".png", ".jpg"))


def mmrope_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmrope", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def tab_lines(stdout: str) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in stdout.splitlines())


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height``: enough to be refused by the pixel limit before decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 1000) + b"IDAT" + zlib.compress(b"\0" * 64)[:8]


def gradient(w: int, h: int) -> np.ndarray:
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    return np.stack([x, y, 255 - x], -1).astype(np.uint8)  # (h, w, 3)


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> Path:
    """A folder of valid images in every awkward form a user's folder may hold."""
    d = tmp_path_factory.mktemp("odd")
    Image.fromarray((np.arange(48 * 32).reshape(32, 48) * 40).astype(np.uint16)).save(d / "depth16.png")
    Image.new("CMYK", (40, 30), (0, 200, 200, 0)).save(d / "cmyk.jpg")
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 220, 50, 47] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(d / "palette_transparent.png", transparency=0)
    Image.fromarray(np.dstack([gradient(40, 40), np.full((40, 40), 128, np.uint8)])).save(d / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display; stored 120 wide, shown 60 wide and 120 tall
    Image.fromarray(gradient(120, 60)).save(d / "exif_rotated.jpg", exif=exif)
    Image.fromarray(gradient(50, 30)[..., 0]).save(d / "grey.png")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(d / "one_pixel.png")
    Image.fromarray(gradient(600, 2)).save(d / "wide_300x1.png")
    Image.fromarray(gradient(4000, 3000)).save(d / "large_4000x3000.jpg", quality=80)
    return d


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory) -> dict[str, str]:
    """file name -> the words its error must hold. ``over_limit.png`` is over a --max-pixels of 20 million."""
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.png").write_text("this is not an image\n")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (d / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "empty.png").write_bytes(b"")
    (d / "over_limit.png").write_bytes(png_header_only(5000, 5000))
    return {str(d / "notes.png"): "not an image", str(d / "truncated.png"): "truncated",
            str(d / "empty.png"): "empty file", str(d / "over_limit.png"): "over the limit max_pixels=20000000"}


def test_caption_a_folder_prints_one_line_per_image(trained_checkpoint):
    proc = mmrope_cli("caption", "data/samples", "--ckpt", trained_checkpoint)
    assert proc.returncode == 0, proc.stderr
    assert list(tab_lines(proc.stdout)) == [str(p.relative_to(ROOT)) for p in SAMPLE_IMAGES]  # sorted, all six
    assert "skipped" not in proc.stderr and "Traceback" not in proc.stderr


def test_bad_files_are_listed_and_the_good_ones_still_captioned(trained_checkpoint, odd_images, bad_images,
                                                                tmp_path):
    """A folder of odd but valid images, a glob over bad files and a missing file, in one run."""
    missing = tmp_path / "missing.png"
    bad_glob = str(Path(next(iter(bad_images))).parent / "*")
    out = tmp_path / "captions.jsonl"
    proc = mmrope_cli("caption", odd_images, bad_glob, missing, "--ckpt", trained_checkpoint, "--max-pixels",
                      20_000_000, "--out", out)
    assert proc.returncode == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["file_name"]).name for r in rows) == sorted(p.name for p in odd_images.iterdir())
    assert all(isinstance(r["caption"], str) and r["image_id"] == Path(r["file_name"]).stem for r in rows)
    assert "Traceback" not in proc.stderr
    assert f"skipped 5 of {len(rows) + 5} images" in proc.stderr
    expected = {**bad_images, str(missing): "file not found"}
    for path, words in expected.items():
        lines = [line for line in proc.stderr.splitlines() if path in line]
        assert len(lines) == 1 and words in lines[0], (path, proc.stderr)


def test_odd_images_are_captioned_in_both_resize_modes(trained_checkpoint, odd_images):
    pipeline = load(trained_checkpoint)
    paths = sorted(odd_images.iterdir())
    for resize in ("fixed", "native"):
        captions = pipeline.caption(paths, resize=resize, batch_size=4)  # batches mix sizes in native mode
        assert len(captions) == len(paths) and all(isinstance(c, str) for c in captions)
    assert pipeline.preprocess(odd_images / "exif_rotated.jpg").shape == (3, 32, 32)
    assert pipeline.preprocess(odd_images / "exif_rotated.jpg", resize="native").shape == (3, 32, 16)  # upright
    wide = pipeline.preprocess(odd_images / "wide_300x1.png", resize="native")
    assert wide.shape[2] > wide.shape[1] and wide.shape[1] % 16 == 0 == wide.shape[2] % 16
    assert pipeline.preprocess(odd_images / "large_4000x3000.jpg", size=64).shape == (3, 64, 64)


def test_python_api_takes_paths_and_pil_images(trained_checkpoint):
    pipeline = mmrope.load(trained_checkpoint, device="cpu")
    path = SAMPLES / "shapes_l2.png"
    by_path, by_image = pipeline.caption([path, Image.open(path)])
    assert by_path == by_image and pipeline.caption(str(path)) == [by_path]
    first, again = (pipeline.caption(path, strategy="sample", temperature=1.5, seed=3) for _ in range(2))
    assert first == again
    with pytest.raises(ValueError, match="size 50 is not a multiple of patch_size \\* spatial_merge_size = 16"):
        pipeline.caption(path, size=50)
    with pytest.raises(ImageError, match="missing.png: file not found"):
        pipeline.caption([path, SAMPLES / "missing.png"])


def test_export_round_trip_gives_the_same_weights_and_captions(trained_checkpoint, tmp_path):
    out = tmp_path / "exported"
    proc = mmrope_cli("export", "--ckpt", trained_checkpoint, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    original, exported = load(trained_checkpoint), load(out)
    assert original.config == exported.config
    assert original.tokenizer.to_dict() == exported.tokenizer.to_dict()
    a, b = original.model.state_dict(), exported.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert exported.model.text.head.weight is exported.model.text.embed.weight  # still tied after loading
    for kwargs in ({}, {"size": 64, "resize": "native", "strategy": "beam", "num_beams": 2}):
        assert original.caption(SAMPLE_IMAGES, **kwargs) == exported.caption(SAMPLE_IMAGES, **kwargs)


def test_bad_checkpoints_are_one_line_errors(trained_checkpoint, tmp_path):
    good = torch.load(trained_checkpoint, weights_only=True, map_location="cpu")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(trained_checkpoint.read_bytes()[:5000])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2, 2)}}, foreign)
    narrower = tmp_path / "narrower.ckpt"
    torch.save({**good, "mmrope": {**good["mmrope"], "config": {**good["mmrope"]["config"], "vision": {
        **good["mmrope"]["config"]["vision"], "dim": 32}}}}, narrower)
    learned = tmp_path / "learned.ckpt"
    torch.save({**good, "mmrope": {**good["mmrope"], "config": {**good["mmrope"]["config"], "vision": {
        **good["mmrope"]["config"]["vision"], "pos_encoding": "learned"}}}}, learned)
    folder = tmp_path / "incomplete"
    load(trained_checkpoint).export(folder)
    (folder / "tokenizer.json").unlink()
    cases = {cut: "cannot be read as a PyTorch checkpoint", text: "cannot be read as a PyTorch checkpoint",
             foreign: "no 'mmrope' entry", narrower: "vision.patch_embed.weight has shape (64, 3, 8, 8), the "
                                                     "config expects (32, 3, 8, 8)",
             learned: "missing vision.positions.pos_embed", folder: "tokenizer.json: missing",
             tmp_path / "nowhere.ckpt": "no such checkpoint file or exported folder"}
    for path, words in cases.items():
        with pytest.raises(ValueError) as e:
            load(path)
        assert str(path) in str(e.value) and words in str(e.value) and "\n" not in str(e.value), str(e.value)
    proc = mmrope_cli("caption", SAMPLE_IMAGES[0], "--ckpt", cut)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"mmrope caption: error: {cut}: ") and proc.stderr.count("\n") == 1


def test_eval_prints_a_table_per_size_and_writes_json(trained_checkpoint, tmp_path):
    out = tmp_path / "eval.json"
    proc = mmrope_cli("eval", "--ckpt", trained_checkpoint, "--data", "configs/debug.yaml", "--sizes", "32,64",
                      "--n", 8, "--max-new-tokens", 8, "--out", out)
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 4  # header, rule, two sizes
    assert all(name in table[0] for name in ("BLEU-4", "CIDEr-D", "exact", "attribute", "relation"))
    assert table[2].startswith("| 32 (train) | 8 |") and table[3].startswith("| 64 | 8 |")
    results = json.loads(out.read_text())["results"]
    assert [r["size"] for r in results] == [32, 64]
    assert all({"n", "bleu4", "cider", "exact", "attribute", "relation"} <= r.keys() for r in results)
    with Image.open(tmp_path / "eval.png") as plot:  # the same numbers against size
        assert plot.format == "PNG" and plot.width > 300


def test_eval_on_a_caption_dataset(trained_checkpoint):
    from mmrope.eval.evaluation import evaluate, resolve_data

    eval_set = resolve_data(str(SAMPLES / "captions.csv"), train_size=32)
    rows, skipped = evaluate(load(trained_checkpoint), eval_set, [32, 48], resize="native")
    assert [(r["size"], r["n"]) for r in rows] == [(32, 6), (48, 6)] and skipped == []
    assert "exact" not in rows[0] and 0.0 <= rows[0]["bleu4"] <= 1.0


def test_a_folder_that_cannot_be_listed_does_not_stop_the_others(tmp_path, monkeypatch):
    """Running as root no folder is unreadable, so the refusal is simulated where the listing happens."""
    from mmrope.cli.caption import expand_inputs

    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32)).save(good)
    locked = tmp_path / "locked"
    locked.mkdir()
    listing = Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    files, problems = expand_inputs([str(good), str(locked)])
    assert files == [str(good)] and problems == [f"{locked}: cannot list this folder (Permission denied)"]


def test_symbolic_link_loops_and_broken_links_are_named(trained_checkpoint, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(gradient(40, 40)).save(folder / "good.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "broken.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "direct.png").symlink_to(tmp_path / "direct.png")
    proc = mmrope_cli("caption", folder, tmp_path / "direct.png", "--ckpt", trained_checkpoint)
    assert proc.returncode == 1 and list(tab_lines(proc.stdout)) == [str(folder / "good.png")]
    assert f"{folder / 'loop.png'}: symbolic link loop" in proc.stderr
    assert f"{tmp_path / 'direct.png'}: symbolic link loop" in proc.stderr
    assert f"{folder / 'broken.png'}: broken symbolic link" in proc.stderr
    assert "skipped 3 of 4 images" in proc.stderr and "Traceback" not in proc.stderr


def test_export_replaces_only_an_empty_folder_or_a_previous_export(trained_checkpoint, tmp_path, capsys):
    """`mmrope export --out runs/x` once deleted the run's checkpoints and logs: only a missing or empty folder, or
    a previous export, is replaced; anything else is refused in one line, before a byte is written."""
    from mmrope import cli

    run = tmp_path / "runs" / "x"
    (run / "checkpoints").mkdir(parents=True)
    (run / "logs").mkdir()
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(trained_checkpoint.read_bytes())
    (run / "logs" / "metrics.csv").write_text("step,loss\n0,1.0\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own notes\n")
    lookalike = tmp_path / "lookalike"  # the three names, but not weights mmrope wrote
    lookalike.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (lookalike / name).write_text("{}")

    for folder, held in ((run, "checkpoints, logs"), (mine, "notes.txt"),
                         (lookalike, "config.json, model.safetensors, tokenizer.json")):
        before = sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file())
        assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(folder)]) == 1
        err = capsys.readouterr().err
        assert err == (f"mmrope export: error: {folder}: holds {held}, not an mmrope export: refusing to replace it; "
                       "give a new or empty folder\n")
        assert sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lookalike", "mine", "runs"]  # no temporary folder left

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(empty)]) == 0
    first = (empty / "model.safetensors").stat().st_ino
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(empty)]) == 0  # a previous export: replaced
    assert sorted(p.name for p in empty.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (empty / "model.safetensors").stat().st_ino != first and load(empty).config == load(ckpt).config
    link = tmp_path / "link"  # through a link, the folder it leads to is replaced and the link kept
    link.symlink_to(empty)
    assert cli.main(["export", "--ckpt", str(ckpt), "--out", str(link)]) == 0
    assert link.is_symlink() and sorted(p.name for p in empty.iterdir()) == ["config.json", "model.safetensors",
                                                                             "tokenizer.json"]


def test_caption_out_never_replaces_an_input_and_is_whole_or_untouched(trained_checkpoint, tmp_path, monkeypatch,
                                                                        capsys):
    """`--out` naming an input once truncated that image before it was read; a failure while writing (a full disk)
    left the previous output cut mid-line. Now an input is refused and the output replaced only once complete."""
    from mmrope import cli
    from mmrope.cli import caption

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(gradient(40, 30)).save(photos / name)
    image = (photos / "a.png").read_bytes()
    for out in (photos / "a.png", Path(str(photos) + "/../photos/a.png")):
        assert cli.main(["caption", str(photos), "--ckpt", str(trained_checkpoint), "--out", str(out)]) == 1
        assert capsys.readouterr().err == (f"mmrope caption: error: --out {out} is one of the inputs: the captions "
                                           "would replace it; write them to another file\n")
        assert (photos / "a.png").read_bytes() == image
    clip = tmp_path / "clip"
    frames_to_folder([Image.new("RGB", (16, 16), c) for c in ("red", "blue")], clip)
    assert cli.main(["caption", str(clip), "--clips", "--ckpt", str(trained_checkpoint), "--out",
                     str(clip / "0002.png")]) == 1
    assert f"--out {clip / '0002.png'} is a frame of the clip {clip}" in capsys.readouterr().err

    out = tmp_path / "captions.jsonl"
    assert cli.main(["caption", str(photos), "--ckpt", str(trained_checkpoint), "--out", str(out)]) == 0
    previous = out.read_text()
    assert len(previous.splitlines()) == 2
    written = []

    def disk_full_after_one_line(path):
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        return Path(path).stem

    monkeypatch.setattr(caption, "image_id", disk_full_after_one_line)
    assert cli.main(["caption", str(photos), "--ckpt", str(trained_checkpoint), "--out", str(out)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (f"mmrope caption: error: --out {out}: cannot write it (No "
                                                        "space left on device); left as it was")
    assert out.read_text() == previous  # the earlier captions, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.jsonl", "clip", "photos"]  # no temporary file


def test_named_pipes_are_skipped_unopened_and_the_others_captioned(trained_checkpoint, tmp_path):
    """A FIFO given as input, or inside a folder, once hung `caption` and `viz` for ever (opened before the
    regular-file check) or was dropped without a word; now each is one line and never opened."""
    import os

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(gradient(40, 40)).save(folder / "good.png")
    os.mkfifo(folder / "inside.png")
    os.mkfifo(tmp_path / "given.gif")
    proc = mmrope_cli("caption", folder, tmp_path / "given.gif", "--ckpt", trained_checkpoint)
    assert proc.returncode == 1 and list(tab_lines(proc.stdout)) == [str(folder / "good.png")]
    for fifo in (folder / "inside.png", tmp_path / "given.gif"):
        assert f"{fifo}: a named pipe (FIFO), not a regular file: not read" in proc.stderr
    assert "skipped 2 of 3 images" in proc.stderr and "Traceback" not in proc.stderr
    proc = mmrope_cli("viz", "attention", tmp_path / "given.gif", "--ckpt", trained_checkpoint, "--out",
                      tmp_path / "attention.png")
    assert proc.returncode == 1 and proc.stderr == (f"mmrope viz: error: {tmp_path / 'given.gif'}: a named pipe "
                                                    "(FIFO), not a regular file: not read\n")


def test_a_nul_byte_in_a_file_name_is_one_line_naming_the_argument(trained_checkpoint, tmp_path, capsys):
    from mmrope import cli

    bad = str(tmp_path / "a\0b")
    ckpt = str(trained_checkpoint)
    commands = {
        ("export", "--ckpt", ckpt, "--out", bad): f"--out {bad!r}",
        ("export", "--ckpt", bad, "--out", str(tmp_path / "x")): f"--ckpt {bad!r}",
        ("eval", "--ckpt", ckpt, "--data", "shapes", "--out", bad): f"--out {bad!r}",
        ("caption", str(SAMPLE_IMAGES[0]), "--ckpt", ckpt, "--out", bad): f"--out {bad!r}",
        ("viz", "attention", bad, "--ckpt", ckpt): f"image {bad!r}",
        ("viz", "ids", "--out", bad): f"--out {bad!r}",
    }
    for args, named in commands.items():
        assert cli.main(list(args)) == 1
        err = capsys.readouterr().err
        assert err == f"mmrope {args[0]}: error: {named}: a file name cannot contain a NUL byte\n", (args, err)
    # among caption's inputs it is one bad input, listed; the others are still captioned
    assert cli.main(["caption", str(SAMPLE_IMAGES[0]), bad, "--ckpt", ckpt]) == 1
    captured = capsys.readouterr()
    assert list(tab_lines(captured.out)) == [str(SAMPLE_IMAGES[0])]
    assert f"  {bad!r}: a file name cannot contain a NUL byte\n" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_caption_clip_limits_are_flags(trained_checkpoint, capsys):
    from mmrope import cli

    clip = SAMPLES / "clips/moves.gif"  # 6 frames of 48 x 48
    ckpt = str(trained_checkpoint)
    assert cli.main(["caption", str(clip), "--ckpt", ckpt, "--max-clip-frames", "5"]) == 1
    assert f"{clip}: more than 5 frames is over the limit max_clip_frames=5" in capsys.readouterr().err
    assert cli.main(["caption", str(clip), "--ckpt", ckpt, "--max-clip-pixels", "10000"]) == 1
    err = capsys.readouterr().err
    assert f"{clip}: 6 frames of 48x48 = 13824 pixels to decode is over the limit max_clip_pixels=10000" in err
    assert cli.main(["caption", str(clip), "--ckpt", ckpt, "--max-clip-pixels", "0"]) == 1
    assert capsys.readouterr().err == "mmrope caption: error: --max-clip-pixels must be positive, got 0\n"
    assert cli.main(["caption", str(clip), "--ckpt", ckpt]) == 0
