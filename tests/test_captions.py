import json
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmrope.data.captions import (
    CaptionDataset,
    CaptionRecord,
    load_caption_records,
    load_coco,
    load_csv,
    load_imagefolder,
)
from mmrope.data.collate import CaptionCollator, Skipped
from mmrope.data.images import ImageError, ImageTransform
from mmrope.data.loader import SkipWarningLoader
from mmrope.data.tokenizer import ByteTokenizer

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples"
NAMES = ["shapes_l1.png", "shapes_l2.png", "shapes_l3.png", "wide.png", "tall.jpg", "grey.png"]


def by_name(records):
    return {r.image.name: r for r in records}


def test_every_loader_reads_the_samples_and_they_agree():
    folder = by_name(load_imagefolder(SAMPLES))
    csv = by_name(load_csv(SAMPLES / "captions.csv"))
    coco = by_name(load_coco(SAMPLES / "captions_coco.json", SAMPLES))
    assert sorted(folder) == sorted(csv) == sorted(coco) == sorted(NAMES)
    for name in NAMES:
        assert folder[name].captions == csv[name].captions == coco[name].captions
        assert folder[name].image.is_file() and folder[name].image == csv[name].image == coco[name].image
    assert len(folder["tall.jpg"].captions) == 3
    assert folder["shapes_l2.png"].scene["level"] == 2 and csv["shapes_l2.png"].scene is None


def test_auto_detect_by_path():
    for path in (SAMPLES, SAMPLES / "metadata.jsonl", SAMPLES / "captions.csv", SAMPLES / "captions_coco.json"):
        assert sorted(by_name(load_caption_records(path))) == sorted(NAMES), path
    with pytest.raises(ValueError, match="expected a folder with metadata.jsonl"):
        load_caption_records(SAMPLES / "tall.jpg")


def test_karpathy_split():
    def names(split):
        return sorted(by_name(load_coco(SAMPLES / "captions_coco.json", SAMPLES, SAMPLES / "dataset_coco.json", split)))

    assert names("train") == sorted(["shapes_l1.png", "shapes_l2.png", "shapes_l3.png", "wide.png"])  # + restval
    assert names("val") == ["tall.jpg"] and names("test") == ["grey.png"]
    with pytest.raises(ValueError, match="needs a karpathy_split file"):
        load_coco(SAMPLES / "captions_coco.json", SAMPLES, split="val")


def test_every_sample_image_goes_through_the_dataset():
    ds = CaptionDataset(load_imagefolder(SAMPLES), ImageTransform("native", patch_size=8, merge_size=2), train=False)
    for i in range(len(ds)):
        s = ds[i]
        _, h, w = s["image"].shape
        assert h % 16 == 0 and w % 16 == 0
        assert s["caption"] == s["references"][0]
    assert ds.num_skipped == 0


def test_training_caption_is_deterministic_per_seed_epoch_index():
    records = load_csv(SAMPLES / "captions.csv")
    tall = next(i for i, r in enumerate(records) if r.image.name == "tall.jpg")

    def captions(seed, epochs=12):
        ds = CaptionDataset(records, seed=seed)
        out = []
        for e in range(epochs):
            ds.set_epoch(e)
            out.append(ds[tall]["caption"])
        return out

    assert captions(0) == captions(0)
    assert len(set(captions(0))) == 3  # every reference gets its turn
    assert captions(0) != captions(1)
    assert CaptionDataset(records)[tall]["references"] == records[tall].captions


def bad_records(tmp_path):
    good = CaptionRecord(SAMPLES / "wide.png", ["a house"], "wide")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    return [good, CaptionRecord(text, ["nothing"], "notes")]


def test_bad_image_is_skipped_named_once_and_counted(tmp_path, caplog):
    ds = CaptionDataset(bad_records(tmp_path))
    assert isinstance(ds[1], Skipped) and ds[1] == ds[1]
    batch = CaptionCollator(ByteTokenizer())([ds[0], ds[1]])
    assert ds.num_skipped == 4  # each time it is drawn
    assert batch["num_skipped"] == 1 and batch["ids"] == ["wide"] and len(batch["skipped"]) == 1
    reason = batch["skipped"][0]
    assert "\n" not in reason and "notes.jpg" in reason and "not an image" in reason
    loader = SkipWarningLoader(ds, batch_size=2, collate_fn=CaptionCollator(ByteTokenizer()))
    with caplog.at_level(logging.WARNING, logger="mmrope.data"):
        for _ in range(3):
            assert [b["num_skipped"] for b in loader] == [1]
    assert [r.getMessage() for r in caplog.records] == [f"skipping {reason}"]


def test_bad_image_can_fail_fast(tmp_path):
    ds = CaptionDataset(bad_records(tmp_path), on_bad_image="raise")
    with pytest.raises(ImageError, match="notes.jpg: not an image"):
        ds[1]


def test_bad_images_through_a_dataloader_with_workers_are_named_once(tmp_path, caplog):
    """Workers are forked anew every epoch: the reason travels with the batch, the main process says it once."""
    ds = CaptionDataset(bad_records(tmp_path) * 2)
    loader = SkipWarningLoader(ds, batch_size=2, num_workers=2, collate_fn=CaptionCollator(ByteTokenizer()))
    with caplog.at_level(logging.WARNING, logger="mmrope.data"):
        for _ in range(2):
            batches = list(loader)
            assert [b["num_skipped"] for b in batches] == [1, 1] and sum(len(b["images"]) for b in batches) == 2
    assert len(caplog.records) == 1 and "notes.jpg: not an image" in caplog.records[0].getMessage()


def test_format_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n{"file_name": "b.png", "text": \n')
    with pytest.raises(ValueError, match="metadata.jsonl line 2: invalid JSON"):
        load_imagefolder(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": []}\n')
    with pytest.raises(ValueError, match="line 1: 'text' must be a non-empty string or list"):
        load_imagefolder(tmp_path)
    (tmp_path / "c.csv").write_text("image,caption\na.png,hi\n")
    with pytest.raises(ValueError, match=r"c.csv: missing column\(s\) \['file_name', 'text'\]"):
        load_csv(tmp_path / "c.csv")
    with pytest.raises(ValueError, match="no metadata.jsonl"):
        load_imagefolder(tmp_path / "nowhere")
    (tmp_path / "coco.json").write_text('{"images": []')
    with pytest.raises(ValueError, match="coco.json: invalid JSON"):
        load_coco(tmp_path / "coco.json", tmp_path)


def test_odd_modes_in_a_folder(tmp_path):
    Image.new("LA", (30, 20), (0, 0)).save(tmp_path / "la.png")
    Image.new("CMYK", (20, 30), (0, 0, 0, 255)).save(tmp_path / "k.jpg")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "la.png", "text": "white"}\n'
                                             '{"file_name": "k.jpg", "text": ["black", "dark"]}\n')
    ds = CaptionDataset(load_imagefolder(tmp_path), train=False)
    white, black = ds[0]["image"], ds[1]["image"]
    assert white.shape[0] == black.shape[0] == 3
    assert white.mean() > 1.5 and black.mean() < -1.5  # normalised white and black


def _dataset_with(tmp_path: Path, name: str) -> dict[str, Path]:
    """The three caption formats, each naming one image as ``name``."""
    folder = tmp_path / "folder"
    folder.mkdir(parents=True)
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": name, "text": "a caption"}) + "\n")
    (folder / "captions.csv").write_text(f"file_name,text\n{name},a caption\n")
    coco = {"images": [{"id": 1, "file_name": name}], "annotations": [{"image_id": 1, "caption": "a caption"}]}
    (folder / "captions.json").write_text(json.dumps(coco))
    return {"jsonl": folder, "csv": folder / "captions.csv", "coco": folder / "captions.json"}


@pytest.mark.parametrize("name", ["../outside.png", "/etc/hostname", "sub/../../outside.png"])
def test_file_names_that_leave_the_folder_are_refused(tmp_path, name):
    for kind, path in _dataset_with(tmp_path / name.replace("/", "_"), name).items():
        with pytest.raises(ValueError) as e:
            load_caption_records(path)
        message = str(e.value)
        assert "points outside" in message and repr(name) in message and "\n" not in message, (kind, message)
        assert ("line 1" in message or "line 2" in message or "image 1" in message), message
        records = load_caption_records(path, allow_outside=True)  # the explicit option lets them through
        folder = path if path.is_dir() else path.parent
        assert len(records) == 1 and records[0].image == folder / name


def test_a_symbolic_link_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (16, 16)).save(outside)
    paths = _dataset_with(tmp_path / "data", "link.png")
    (paths["jsonl"] / "link.png").symlink_to(outside)
    with pytest.raises(ValueError, match="'link.png' points outside"):
        load_imagefolder(paths["jsonl"])


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("file_name,text\r\nshapes_l1.png,yellow square at the top\r\n".encode("utf-8-sig"))
    records = load_csv(path, SAMPLES)
    assert [(r.image.name, r.captions) for r in records] == [("shapes_l1.png", ["yellow square at the top"])]


def test_text_that_is_not_utf8_names_the_file_and_line(tmp_path):
    bad = "a caf\xe9 on the corner".encode("latin-1")
    (tmp_path / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "ok"}\n{"file_name": "b.png", '
                                             b'"text": "' + bad + b'"}\n')
    (tmp_path / "captions.csv").write_bytes(b"file_name,text\na.png,ok\nb.png," + bad + b"\n")
    (tmp_path / "captions.json").write_bytes(b'{"images": [],\n "annotations": [{"caption": "' + bad + b'"}]}')
    for path, line in ((tmp_path, 2), (tmp_path / "captions.csv", 3), (tmp_path / "captions.json", 2)):
        with pytest.raises(ValueError) as e:
            load_caption_records(path)
        assert f"line {line}: not UTF-8 text (byte 0xe9)" in str(e.value) and str(path.name) in str(e.value)


@pytest.mark.parametrize("scene, expected", [({"objects": 5}, "'level' 1, 2 or 3"), (5, "a JSON object"),
                                             ("x", "a JSON object"),
                                             ({"level": 2, "objects": [{"colour": "red", "shape": "square"}],
                                               "relations": []}, "numbers 'x' and 'y'")])
def test_a_malformed_scene_is_one_line_naming_file_and_row(tmp_path, scene, expected):
    shutil.copy(SAMPLES / "shapes_l1.png", tmp_path / "a.png")
    rows = [{"file_name": "a.png", "text": "yellow square at the top"},
            {"file_name": "a.png", "text": "yellow square at the top", "scene": scene}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError) as e:
        load_imagefolder(tmp_path)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'metadata.jsonl'} line 2: 'scene' is not a shapes scene as `mmrope data "
                              "shapes` writes it (expected ") and expected in message and "\n" not in message


def test_a_malformed_scene_stops_eval_and_training_with_one_line(tmp_path, capsys, trained_checkpoint):
    """Scored only at validation, a bad scene used to stop `mmrope eval` and training there with a traceback (and
    no checkpoint); it is refused when the rows are read."""
    from mmrope.cli import main as mmrope_main
    from mmrope.train import cli as train

    rows = [json.loads(line) for line in (SAMPLES / "places/metadata.jsonl").read_text().splitlines()][:2]
    rows[1]["scene"] = {"objects": 5}
    for row in rows:
        shutil.copy(SAMPLES / "places" / row["file_name"], tmp_path / row["file_name"])
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    where = f"{tmp_path / 'metadata.jsonl'} line 2: 'scene' is not a shapes scene"
    assert mmrope_main(["eval", "--ckpt", str(trained_checkpoint), "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mmrope eval: error: {where}") and err.count("\n") == 1
    root = tmp_path / "run"
    args = ["fit", "--config", str(ROOT / "configs/debug.yaml"), f"--trainer.default_root_dir={root}",
            "--data.dataset=captions", f"--data.train={SAMPLES / 'places'}", f"--data.val={tmp_path}",
            "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--data.batch_size=4"]
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert f"mmrope train: error: {where}" in err and "Traceback" not in err
