"""Hugging Face datasets on disk as a caption source: ``save_to_disk`` folders and parquet files, read with pyarrow
alone, for training, evaluation and ``mmrope data shard``. The sets are built here: with pyarrow writing the layout
``datasets.save_to_disk`` writes, and, where the ``datasets`` library is installed, with the library itself."""

import io
import json
import logging
import pickle
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow", reason="reading Hugging Face datasets needs pyarrow: pip install -e '.[datasets]'")
pq = pytest.importorskip("pyarrow.parquet")

from mmrope.benchmarks.captions import records_set  # noqa: E402
from mmrope.data.captions import CaptionDataset, load_caption_records  # noqa: E402
from mmrope.data.collate import Skipped  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ["red", "green", "blue", "yellow", "white", "black"]
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets' Image feature in Arrow
FEATURES = {"image": {"_type": "Image"}, "caption": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"}}


def encoded(colour: str, fmt: str = "PNG", size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def table(rows: list[dict], caption_type=None):
    """rows of {"image": {"bytes", "path"} | None, "caption": str | list | None} -> an Arrow table as datasets holds
    it, with datasets' schema metadata."""
    caption_type = caption_type or pa.list_(pa.string())
    schema = pa.schema([("image", IMAGE_TYPE), ("caption", caption_type)],
                       metadata={"huggingface": json.dumps({"info": {"features": FEATURES}})})
    return pa.Table.from_pylist(rows, schema=schema)


def save_to_disk(folder: Path, data, num_shards: int = 1) -> Path:
    """What ``datasets.Dataset.save_to_disk`` writes: Arrow IPC streams ``data-0000i-of-0000N.arrow``, the list of them
    in ``state.json`` and the features in ``dataset_info.json``."""
    folder.mkdir(parents=True)
    bounds = np.linspace(0, data.num_rows, num_shards + 1).astype(int)
    names = [f"data-{i:05d}-of-{num_shards:05d}.arrow" for i in range(num_shards)]
    for name, start, stop in zip(names, bounds[:-1], bounds[1:]):
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, data.schema) as writer:
            writer.write_table(data.slice(start, stop - start))
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": n} for n in names], "_fingerprint": "0", "_format_columns": None,
        "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}, indent=2))
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": FEATURES}))
    return folder


def colour_rows(n: int = 6) -> list[dict]:
    return [{"image": {"bytes": encoded(COLOURS[i % 6]), "path": f"{i}.png"},
             "caption": [f"a {COLOURS[i % 6]} square", f"{COLOURS[i % 6]}"]} for i in range(n)]


def centre_colour(image) -> tuple:
    rgb = image.convert("RGB") if isinstance(image, Image.Image) else image
    return rgb.getpixel((rgb.width // 2, rgb.height // 2))


def test_a_save_to_disk_folder_of_two_files_reads_every_row_in_order(tmp_path):
    folder = save_to_disk(tmp_path / "set", table(colour_rows(6)), num_shards=2)
    records = load_caption_records(folder)
    assert [r.id for r in records] == ["0", "1", "2", "3", "4", "5"]  # dataset[i]'s number, over both files
    assert [r.captions for r in records] == [[f"a {c} square", c] for c in COLOURS]
    assert [str(r.image) for r in records][3] == f"{folder / 'data-00001-of-00002.arrow'} row 0"
    assert [centre_colour(r.image.load()) for r in records][:3] == [(255, 0, 0), (0, 128, 0), (0, 0, 255)]
    dataset = CaptionDataset(records, train=False)
    sample = dataset[2]
    assert sample["image"].shape[0] == 3 and sample["caption"] == "a blue square"
    assert sample["references"] == ["a blue square", "blue"]


def test_what_the_datasets_library_writes_reads_the_same(tmp_path):
    """The layout above is the library's: a set saved by ``datasets`` itself (folder, parquet, a DatasetDict)."""
    datasets = pytest.importorskip("datasets", reason="the datasets library is not installed (pip install datasets)")
    rows = colour_rows(5)
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [r["image"] for r in rows], "text": [r["caption"][0] for r in rows]},
                                    features=features)
    ds.save_to_disk(str(tmp_path / "saved"), num_shards=2)
    ds.to_parquet(str(tmp_path / "set.parquet"))
    datasets.DatasetDict({"train": ds, "validation": ds.select([0, 1])}).save_to_disk(str(tmp_path / "dict"))
    expected = [[r["caption"][0]] for r in rows]
    for path in (tmp_path / "saved", tmp_path / "set.parquet", tmp_path / "dict" / "validation"):
        records = load_caption_records(path)
        assert [r.captions for r in records] == expected[:len(records)] and len(records) in (2, 5), path
        assert [centre_colour(r.image.load()) for r in records][:2] == [(255, 0, 0), (0, 128, 0)]
        assert records[0].image.read_bytes() == rows[0]["image"]["bytes"]  # the bytes as saved
    with pytest.raises(ValueError) as e:
        load_caption_records(tmp_path / "dict")
    assert str(e.value) == (f"{tmp_path / 'dict'}: a DatasetDict of splits train, validation: give one split's "
                            f"folder ({tmp_path / 'dict' / 'train'})")


def test_parquet_files_and_a_pattern_of_them(tmp_path):
    data = table(colour_rows(6))
    pq.write_table(data.slice(0, 4), tmp_path / "train-00000-of-00002.parquet")
    pq.write_table(data.slice(4, 2), tmp_path / "train-00001-of-00002.parquet")
    pq.write_table(data.slice(0, 1), tmp_path / "test-00000-of-00001.parquet")
    records = load_caption_records(tmp_path / "train-*.parquet")
    assert [r.captions[1] for r in records] == COLOURS and [r.id for r in records] == list("012345")
    assert [r.captions[1] for r in load_caption_records(tmp_path / "test-00000-of-00001.parquet")] == ["red"]
    with pytest.raises(ValueError, match=r"validation-\*\.parquet: no file matches this pattern"):
        load_caption_records(tmp_path / "validation-*.parquet")


def test_columns_are_found_or_named_and_missing_ones_are_one_line(tmp_path):
    rows = [{"jpg": encoded("red", "JPEG"), "sentence": "a red square", "caption": 3}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "raw.parquet")
    file = tmp_path / "raw.parquet"
    records = load_caption_records(file, image_column="jpg", caption_column="sentence")  # bytes, a string
    assert records[0].captions == ["a red square"] and centre_colour(records[0].image.load())[0] > 240
    for kwargs, message in [
        ({}, f"{file}: no image column 'image' (its columns: jpg, sentence, caption); name it with "
             "data.captions.image_column or --image-column"),
        ({"image_column": "jpg", "caption_column": "text"},
         f"{file}: no caption column 'text' (its columns: jpg, sentence, caption); name it with "
         "data.captions.caption_column or --caption-column"),
        ({"image_column": "jpg"}, f"{file}: column 'caption' holds int64: expected a string or a list of strings"),
        ({"image_column": "sentence", "caption_column": "sentence"}, None),
        ({"image_column": "caption", "caption_column": "sentence"},
         f"{file}: column 'caption' holds int64: expected images (datasets' Image feature, a struct of bytes and "
         "path), bytes or file paths"),
    ]:
        if message is None:
            continue
        with pytest.raises(ValueError) as e:
            load_caption_records(file, **kwargs)
        assert str(e.value) == message
    pq.write_table(pa.Table.from_pylist([{"image": encoded("red"), "label": 1}]), tmp_path / "labels.parquet")
    with pytest.raises(ValueError, match=r"labels.parquet: no caption column \(looked for 'caption', 'text', "
                                         r"'captions'; its columns: image, label\)"):
        load_caption_records(tmp_path / "labels.parquet")


def test_bad_rows_are_skipped_with_one_line_each_and_bad_images_when_drawn(tmp_path, caplog):
    rows = colour_rows(8)
    rows[1]["caption"] = None
    rows[2]["caption"] = ["", "  "]
    rows[3]["image"] = None
    rows[4]["image"] = {"bytes": None, "path": None}
    rows[5]["image"]["bytes"] = b"not an image at all"
    folder = save_to_disk(tmp_path / "set", table(rows))
    arrow = folder / "data-00000-of-00001.arrow"
    with caplog.at_level(logging.WARNING):
        records = load_caption_records(folder)
    assert [r.id for r in records] == ["0", "5", "6", "7"]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping bad row {arrow} row 1: no caption in column 'caption'",
        f"skipping bad row {arrow} row 2: no caption in column 'caption'",
        f"skipping bad row {arrow} row 3: no image in column 'image'",
        f"skipping bad row {arrow} row 4: no image in column 'image'"]
    dataset = CaptionDataset(records, train=False)
    assert dataset[1] == dataset[1] == Skipped(f"bad image {arrow} row 5: not an image (format not recognised)")
    assert isinstance(dataset[2], dict) and dataset.num_skipped == 2


def test_many_bad_rows_are_counted_after_the_first_ten(tmp_path, caplog):
    rows = colour_rows(30)
    for row in rows[:25]:
        row["caption"] = []
    with caplog.at_level(logging.WARNING):
        records = load_caption_records(save_to_disk(tmp_path / "set", table(rows)))
    assert len(records) == 5 and len(caplog.records) == 11
    assert caplog.records[-1].getMessage() == f"skipping 15 more bad rows of {tmp_path / 'set'} (25 in all)"
    for row in rows:
        row["caption"] = None
    with pytest.raises(ValueError, match=r"set2: no row with both an image and a caption \(30 skipped\)"):
        load_caption_records(save_to_disk(tmp_path / "set2", table(rows)))


def test_the_pixel_limit_applies_to_images_held_in_the_file(tmp_path):
    rows = [{"image": {"bytes": encoded("red", size=(400, 300)), "path": None}, "caption": ["big"]}]
    records = load_caption_records(save_to_disk(tmp_path / "set", table(rows)))
    skipped = CaptionDataset(records, max_pixels=10_000)[0]
    assert isinstance(skipped, Skipped)
    assert skipped.reason.endswith("row 0: 400x300 = 120000 pixels is over the limit max_pixels=10000")


def test_image_paths_stay_inside_the_dataset_folder(tmp_path):
    folder = tmp_path / "set"
    rows = [{"image": {"bytes": None, "path": "pics/a.png"}, "caption": ["a red square"]}]
    save_to_disk(folder, table(rows))
    (folder / "pics").mkdir()
    Image.new("RGB", (32, 32), "red").save(folder / "pics" / "a.png")
    record = load_caption_records(folder)[0]
    assert record.image == folder / "pics" / "a.png" and CaptionDataset([record])[0] is not None
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (32, 32), "blue").save(outside)
    save_to_disk(tmp_path / "set2", table([{"image": {"bytes": None, "path": str(outside)}, "caption": ["x"]}]))
    with pytest.raises(ValueError) as e:
        load_caption_records(tmp_path / "set2")
    assert str(e.value).startswith(f"{tmp_path / 'set2' / 'data-00000-of-00001.arrow'} row 0: '{outside}' points "
                                   f"outside {tmp_path / 'set2'}: refused") and "allow_outside_paths" in str(e.value)
    assert load_caption_records(tmp_path / "set2", allow_outside=True)[0].image == outside


def test_records_pickle_without_their_images(tmp_path):
    """A DataLoader worker started by spawn gets the records: the file's name, not its data."""
    rows = [{"image": {"bytes": encoded("red", size=(256, 256)) + b"\0" * 100_000, "path": None}, "caption": ["a"]}]
    record = load_caption_records(save_to_disk(tmp_path / "set", table(rows)))[0]
    data = pickle.dumps(record)
    assert len(data) < 2_000
    assert centre_colour(pickle.loads(data).image.load()) == (255, 0, 0)


def test_an_evaluation_set_decodes_its_images_and_leaves_bad_ones_out(tmp_path, caplog):
    rows = colour_rows(3)
    rows[1]["image"]["bytes"] = b"\x89PNG\r\n\x1a\n cut"
    folder = save_to_disk(tmp_path / "set", table(rows))
    with caplog.at_level(logging.WARNING):
        eval_set = records_set(folder)
    assert eval_set.references == [["a red square", "red"], ["a blue square", "blue"]]
    assert [centre_colour(image) for image in eval_set.images(64)] == [(255, 0, 0), (0, 0, 255)]
    assert "data-00000-of-00001.arrow row 1" in caplog.records[0].getMessage()


def test_without_pyarrow_it_is_one_line_saying_what_to_install(tmp_path):
    folder = save_to_disk(tmp_path / "set", table(colour_rows(1)))
    with mock.patch.dict(sys.modules, {"pyarrow": None}), pytest.raises(ValueError) as e:
        load_caption_records(folder)
    assert str(e.value) == (f"{folder}: reading a Hugging Face dataset needs pyarrow: pip install 'mmrope[datasets]' "
                            "(or pip install pyarrow)")


def test_shards_from_a_saved_dataset_keep_the_image_bytes(tmp_path, capsys, caplog):
    from mmrope.cli import main as mmrope_main
    from mmrope.data.shards import parse_sample, read_shard, read_shard_set

    rows = colour_rows(5)
    rows[0]["image"]["bytes"] = encoded("red", "JPEG")
    rows[1]["image"]["bytes"] = encoded("green", "BMP")  # not a shard format: stored as PNG
    rows[2]["caption"] = None
    folder = save_to_disk(tmp_path / "set", table(rows), num_shards=2)
    out = tmp_path / "shards"
    with caplog.at_level(logging.WARNING):
        assert mmrope_main(["data", "shard", str(folder), "--out", str(out), "--samples-per-shard", "3"]) == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping bad row {folder / 'data-00001-of-00002.arrow'} row 0: no caption in column 'caption'"]
    assert "wrote 4 samples in 2 shards" in capsys.readouterr().out
    raw = [sample for shard in read_shard_set(out).shards for sample in read_shard(shard)]
    assert [sorted(k for k in s if not k.startswith("__")) for s in raw][:2] == [["jpg", "json", "txt"],
                                                                                  ["json", "png", "txt"]]
    assert raw[0]["jpg"] == rows[0]["image"]["bytes"] and raw[2]["png"] == rows[3]["image"]["bytes"]
    parsed = [parse_sample(s) for s in raw]
    assert [p[1] for p in parsed] == [r["caption"] for i, r in enumerate(rows) if i != 2]
    assert centre_colour(parsed[1][0]) == (0, 128, 0)
    assert [json.loads(s["json"])["id"] for s in raw] == ["0", "1", "3", "4"]


def test_shard_command_names_a_missing_column(tmp_path, capsys):
    from mmrope.cli import main as mmrope_main

    folder = save_to_disk(tmp_path / "set", table(colour_rows(2)))
    assert mmrope_main(["data", "shard", str(folder), "--out", str(tmp_path / "out"), "--caption-column",
                        "sentences"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no caption column 'sentences' (its columns: image, caption)" in err
    assert mmrope_main(["data", "shard", str(folder), "--out", str(tmp_path / "out"), "--caption-column",
                        "caption"]) == 0


def test_a_saved_dataset_trains_and_validates(tmp_path):
    """The README's command: data.train a save_to_disk folder, data.val a parquet file of plain string captions."""
    from mmrope.train import cli as train

    folder = save_to_disk(tmp_path / "train", table(colour_rows(24)), num_shards=2)
    val = tmp_path / "val.parquet"
    pq.write_table(table([{**r, "caption": r["caption"][0]} for r in colour_rows(4)], pa.string()), val)
    root = tmp_path / "run"
    args = ["fit", "--config", str(ROOT / "configs/debug.yaml"), f"--trainer.default_root_dir={root}",
            "--data.dataset=captions", f"--data.train={folder}", f"--data.val={val}", "--trainer.max_steps=4",
            "--trainer.val_check_interval=4", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--data.batch_size=8", "--model.max_new_tokens=4"]
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        assert train.main(args) == 0
    assert (root / "checkpoints" / "last.ckpt").is_file()
    metrics = (next((root / "logs").glob("version_*")) / "metrics.csv").read_text()
    assert "val/cider" in metrics.splitlines()[0]
