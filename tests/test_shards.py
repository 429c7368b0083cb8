"""WebDataset shards: written from every format the project reads, split so that every sample of an epoch is read
once over ranks and workers (shard counts that divide nothing included), resumed mid-epoch exactly, bad samples
skipped and named, broken shards stopped with one line; and the same under two gloo DDP processes with a SIGTERM."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from mmrope.cli import main as mmrope_main
from mmrope.data.collate import CaptionCollator, SkippedBatch
from mmrope.data.images import ImageTransform
from mmrope.data.shards import (
    ShardError,
    ShardLoader,
    ShardStream,
    plan_epoch,
    read_shard_set,
    resolve_entry,
    shapes_samples,
    write_shards,
)
from mmrope.data.tokenizer import build_tokenizer
from mmrope.train import cli as train

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data/samples"
TRANSFORM = ImageTransform(mode="fixed", size=16, patch_size=8, merge_size=2)


def shapes_shards(folder: Path, n: int, per_shard: int, split: str = "train") -> Path:
    write_shards(shapes_samples(n, size=16, split=split), folder, per_shard)
    return folder


def stream(folder: Path, **kw) -> ShardStream:
    kw = {"batch_size": 3, "shuffle_window": 4, **kw}
    return ShardStream(read_shard_set(folder), TRANSFORM, **kw)


def epoch_ids(s: ShardStream, epoch: int, workers: int = 0) -> list[list[str]]:
    """The ids of every batch a rank takes in one epoch, through a real DataLoader (worker processes when asked)."""
    s.set_epoch(epoch)
    loader = ShardLoader(s, CaptionCollator(build_tokenizer("byte")), num_workers=workers)
    return [batch["ids"] for batch in loader]


@pytest.mark.parametrize("counts, world, workers, batch", [((5, 3, 7, 1, 4), 3, 2, 3), ((9,), 2, 1, 4),
                                                           ((4, 4, 4), 2, 3, 2), ((1, 1, 1, 1, 1, 1, 1), 4, 2, 2),
                                                           ((10, 3), 2, 2, 4)])
def test_every_sample_of_an_epoch_once_over_ranks_and_workers(counts, world, workers, batch):
    """Shard counts that divide nothing, sample counts that ranks do not divide: still each sample once, and every
    rank the same number of batches (DDP steps together)."""
    total = sum(counts)
    for epoch in range(3):
        plans = [plan_epoch(counts, epoch, 0, True, r, world, workers, batch) for r in range(world)]
        assert len({len(p.batch_sizes) for p in plans}) == 1
        assert all(1 <= size <= batch for p in plans for size in p.batch_sizes)
        positions = []
        for plan in plans:
            for k in range(workers):
                start, n = plan.worker_starts[k], sum(plan.worker_batches(k))
                positions += [(piece.shard, i) for piece in plan.pieces(start, start + n)
                              for i in range(piece.start, piece.stop)]
        assert len(positions) == total and len(set(positions)) == total
        for plan in plans:  # resuming after b batches: what the workers had used adds up to those batches
            for b in range(len(plan.batch_sizes) + 1):
                assert sum(plan.used(b)) == sum(plan.batch_sizes[:b])


def test_a_split_that_needs_an_empty_batch_is_refused():
    """7 samples over 4 ranks in batches of 1: one rank would have a step with nothing to train on."""
    with pytest.raises(ValueError, match="7 samples cannot be split over 4 ranks in batches of 1"):
        plan_epoch((7,), 0, 0, True, 0, 4, 1, 1)


def test_streams_read_each_key_once_per_epoch_with_workers_and_resume_exactly(tmp_path):
    """Real shards of 7, 7, 7 and 2 samples, 2 ranks x 2 DataLoader worker processes, batches of 3."""
    folder = shapes_shards(tmp_path / "train", 23, per_shard=7)
    ranks = [stream(folder, rank=r, world_size=2, num_workers=2) for r in range(2)]
    epochs = [[epoch_ids(s, e, workers=2) for s in ranks] for e in range(2)]
    for per_rank in epochs:
        assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0])
        seen = Counter(i for batches in per_rank for b in batches for i in b)
        assert set(seen) == {f"train/{i}" for i in range(23)} and set(seen.values()) == {1}
    assert epochs[0] != epochs[1]  # a new order every epoch
    straight = epochs[1][0]
    for b in (1, 2, len(straight) - 1):  # resume epoch 1 of rank 0 after b batches
        s = stream(folder, rank=0, world_size=2, num_workers=2)
        s.resume_at = (1, b)
        assert epoch_ids(s, 1, workers=2) == straight[b:]
    single = stream(folder, num_workers=0)  # no workers: the same samples, the same resume
    full = epoch_ids(single, 0)
    single.resume_at = (0, 3)
    assert epoch_ids(single, 0) == full[3:]
    assert sorted(i for b in full for i in b) == sorted(f"train/{i}" for i in range(23))


def test_a_resume_split_another_way_is_refused(tmp_path):
    folder = shapes_shards(tmp_path / "train", 12, per_shard=5)
    state = stream(folder, world_size=2, num_workers=2).state(epoch=0, batches=1)
    assert state["used"] == [[3, 0], [3, 0]]  # per rank, per worker
    with pytest.raises(ValueError, match="split for world_size=2, this run has 1"):
        stream(folder, world_size=1, num_workers=2).check_state(state)


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png(colour=(200, 40, 40)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _index(folder: Path, shards: dict[str, int], captions: str = "red square\n") -> Path:
    (folder / "captions.txt").write_text(captions)
    (folder / "index.json").write_text(json.dumps({
        "format": "mmrope-shards", "version": 1, "captions": "captions.txt",
        "shards": [{"url": name, "samples": n} for name, n in shards.items()]}))
    return folder


def bad_sample_shards(folder: Path) -> Path:
    """One img2dataset-style shard (jpg/png + txt + json metadata) with four bad samples among four good ones."""
    folder.mkdir(parents=True)
    good = _png()
    _write_tar(folder / "00000.tar", [
        ("000.png", good), ("000.txt", b"red square"), ("000.json", b'{"caption": "red square", "status": "ok"}'),
        ("001.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg"), ("001.txt", b"red square"),  # corrupt image
        ("002.png", good), ("002.json", b'{"status": "success"}'),  # no caption at all
        ("003.png", good), ("003.txt", b"caf\xe9 square"),  # Latin-1, not UTF-8
        ("004.png", good), ("004.txt", b"red square"),
        ("005.png", good), ("005.txt", b"   "),  # empty caption
        ("006.png", good), ("006.txt", b"red square"),
        ("007.png", good), ("007.txt", b"red square"),
    ])
    return _index(folder, {"00000.tar": 8})


def test_bad_samples_are_skipped_named_and_counted(tmp_path, caplog):
    folder = bad_sample_shards(tmp_path / "bad")
    s = stream(folder, batch_size=4, train=False)
    with caplog.at_level(logging.WARNING, logger="mmrope.data"):
        batches = list(ShardLoader(s, CaptionCollator(build_tokenizer("byte"))))
    assert [b["num_skipped"] for b in batches] == [3, 1]
    assert [i for b in batches for i in b["ids"]] == [f"{folder / '00000.tar'}/{k}" for k in ("000", "004", "006",
                                                                                              "007")]
    assert s.num_skipped == 4
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 4 and all(m.count("\n") == 0 for m in warnings)
    shard = str(folder / "00000.tar")
    assert f"skipping bad sample {shard} 001.jpg: cannot open" in warnings[0]  # a JPEG header, then text
    assert f"{shard} 002: no caption" in warnings[1]
    assert f"{shard} 003.txt: not UTF-8 text (byte 0xe9" in warnings[2]
    assert f"{shard} 005: empty caption" in warnings[3]
    all_bad = [CaptionCollator(build_tokenizer("byte"))([s._decode(raw) for raw in s._raw(s.plan(0).pieces(1, 3))])]
    assert isinstance(all_bad[0], SkippedBatch) and all_bad[0].num_skipped == 2
    assert [r.startswith(f"bad sample {shard} 00{k}") for r, k in zip(all_bad[0].reasons, (1, 2))] == [True, True]


@pytest.mark.parametrize("workers", [0, 2])
def test_each_bad_sample_is_named_once_over_epochs_and_workers(tmp_path, caplog, workers):
    """DataLoader workers are forked anew every epoch, from a parent that never saw their warnings: the reasons
    travel with the batches and the loader in the main process says each one once."""
    folder = bad_sample_shards(tmp_path / "bad")
    s = stream(folder, batch_size=2, num_workers=workers)
    loader = ShardLoader(s, CaptionCollator(build_tokenizer("byte")), num_workers=workers)
    with caplog.at_level(logging.WARNING, logger="mmrope.data"):
        for epoch in range(3):
            s.set_epoch(epoch)
            skipped = sum(b.num_skipped if isinstance(b, SkippedBatch) else b["num_skipped"] for b in loader)
            assert skipped == 4
    warnings = sorted(r.getMessage() for r in caplog.records)
    assert len(warnings) == 4 and all(w.startswith("skipping bad sample ") for w in warnings)
    shard = str(folder / "00000.tar")
    assert [w.removeprefix(f"skipping bad sample {shard} ").split(":")[0] for w in warnings] == [
        "001.jpg", "002", "003.txt", "005"]


def test_training_goes_on_past_bad_samples_and_counts_them(tmp_path, capsys):
    folder = bad_sample_shards(tmp_path / "bad")
    args = tiny_shard_args(tmp_path / "run", folder, folder, "--data.batch_size=4", "--trainer.limit_val_batches=0",
                           "--data.max_skipped_fraction=0.6", steps=4)
    assert train.main(args) == 0
    rows = [r for path in (tmp_path / "run").glob("logs/version_*/metrics.csv")
            for r in csv.DictReader(path.open()) if r.get("train/images_per_s")]
    assert rows and all(float(r["train/images_per_s"]) > 0 and float(r["train/tokens_per_s"]) > 0 for r in rows)
    args = tiny_shard_args(tmp_path / "strict", folder, folder, "--data.batch_size=4",
                           "--trainer.limit_val_batches=0", "--data.max_skipped_fraction=0.1", steps=4)
    assert train.main(args) == 1
    assert "4 of the 8 training samples drawn so far could not be read" in capsys.readouterr().err


def tiny_shard_args(root: Path, train_shards: Path, val_shards: Path, *extra: str, steps: int = 4) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs/shards_debug.yaml"), f"--trainer.default_root_dir={root}",
            f"--data.train={train_shards}", f"--data.val={val_shards}", f"--trainer.max_steps={steps}",
            "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--data.num_workers=0", "--model.max_new_tokens=4", *extra]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_missing_or_truncated_shard_stops_with_one_line(tmp_path, capsys, workers):
    folder = shapes_shards(tmp_path / "train", 12, per_shard=4)
    data = (folder / "000001.tar").read_bytes()
    (folder / "000001.tar").write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    args = tiny_shard_args(tmp_path / "run", folder, folder, "--data.batch_size=4", "--trainer.limit_val_batches=0",
                           f"--data.num_workers={workers}", "--data.shards.shuffle_window=1", steps=6)
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert f"mmrope train: error: {folder / '000001.tar'}: truncated or not a tar file" in err
    assert "Traceback" not in err and err.count("mmrope train: error:") == 1
    (folder / "000001.tar").unlink()  # named when the index is read, before any step
    args = [a.replace(str(tmp_path / "run"), str(tmp_path / "again")) for a in args]
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert (f"mmrope train: error: {folder / '000001.tar'}: shard missing (no such file; {folder / 'index.json'} "
            "lists it)") in err
    assert "Traceback" not in err and not (tmp_path / "again/checkpoints").exists()


def test_a_shard_shorter_than_its_index_is_named(tmp_path):
    folder = tmp_path / "short"
    folder.mkdir()
    _write_tar(folder / "a.tar", [(f"{k}.{e}", _png() if e == "png" else b"red") for k in range(3)
                                  for e in ("png", "txt")])
    _index(folder, {"a.tar": 5})
    with pytest.raises(ShardError, match=r"a.tar: 3 samples where the index says 5: truncated"):
        list(stream(folder, train=False))
    data = (folder / "a.tar").read_bytes()
    (folder / "a.tar").write_bytes(data[:4 * 1024])  # cut at a member boundary: tarfile reads it as whole
    _index(folder, {"a.tar": 2})
    with pytest.raises(ShardError, match=r"a.tar: truncated \(it ends without the end-of-archive blocks"):
        list(stream(folder, train=False))


def test_mmrope_data_shard_writes_every_format_the_project_reads(tmp_path, capsys):
    """COCO JSON, imagefolder and CSV give the same samples; the same input gives byte-identical shards; `mmrope
    data index` of them gives the same counts and captions."""
    out = {}
    for name, source in (("folder", [str(SAMPLES)]), ("csv", [str(SAMPLES / "captions.csv")]),
                         ("coco", [str(SAMPLES / "captions_coco.json"), "--image-dir", str(SAMPLES)])):
        assert mmrope_main(["data", "shard", *source, "--out", str(tmp_path / name), "--samples-per-shard", "4"]) == 0
        batches = list(stream(tmp_path / name, batch_size=6, train=False))
        out[name] = sorted((tuple(s["references"]), s["image"].sum().item()) for b in batches for s in b)
    assert out["folder"] == out["csv"] == out["coco"] and len(out["folder"]) == 6
    assert "wrote 6 samples in 2 shards" in capsys.readouterr().out
    assert mmrope_main(["data", "shard", "shapes", "--n", "10", "--size", "16", "--out", str(tmp_path / "s1")]) == 0
    assert mmrope_main(["data", "shard", "shapes", "--n", "10", "--size", "16", "--out", str(tmp_path / "s2")]) == 0
    assert (tmp_path / "s1/000000.tar").read_bytes() == (tmp_path / "s2/000000.tar").read_bytes()
    scenes = [s["scene"] for b in stream(tmp_path / "s1", batch_size=10, train=False) for s in b]
    assert all(scene and scene["captions"] for scene in scenes)  # shapes stay scoreable
    pattern = str(tmp_path / "folder" / "{000000..000001}.tar")
    assert mmrope_main(["data", "index", pattern, "--out", str(tmp_path / "idx/index.json"),
                        "--trust-shard-index"]) == 0  # shards outside the index's folder: only when trusted
    indexed, written = read_shard_set(tmp_path / "idx", trust=True), read_shard_set(tmp_path / "folder")
    assert [s.samples for s in indexed.shards] == [s.samples for s in written.shards] == [4, 2]
    assert sorted(indexed.read_captions()) == sorted(written.read_captions())


def test_eval_reads_a_shard_folder_or_a_config_naming_shards(tmp_path):
    from mmrope.eval.evaluation import data_set, resolve_data

    folder = shapes_shards(tmp_path / "val", 5, per_shard=2, split="val")
    whole = resolve_data(str(folder), 16)
    config = data_set({"dataset": "shards", "image_size": 16, "val": str(folder), "test": None, "resize": "fixed"},
                      "val", n=4)
    assert len(whole.images(16, None)) == len(whole) == 5 and len(config) == 4
    assert whole.scenes is not None and whole.references[0] == whole.scenes[0]["captions"]  # scored as shapes


def _rewrite_index(folder: Path, **changes) -> Path:
    """The index of ``folder`` with shard 0's url (``url=``) or the captions file (``captions=``) replaced."""
    index = json.loads((folder / "index.json").read_text())
    if "url" in changes:
        index["shards"][0]["url"] = changes["url"]
    if "captions" in changes:
        index["captions"] = changes["captions"]
    (folder / "index.json").write_text(json.dumps(index))
    return folder / "index.json"


def test_an_index_runs_no_command_in_training_or_eval(tmp_path, capsys, trained_checkpoint):
    """A downloaded index whose shard url is a `pipe:` command: refused in one line by train.py fit and by mmrope
    eval --data, naming the index, the entry and the switch; the command never runs. Behind the switch, pipe: urls
    (`pipe:aws s3 cp ...` in real use) are read."""
    folder = shapes_shards(tmp_path / "train", 6, per_shard=3)
    pwned = tmp_path / "PWNED"
    url = f"pipe:touch {pwned}; cat {folder / '000000.tar'}"
    index = _rewrite_index(folder, url=url)
    args = tiny_shard_args(tmp_path / "run", folder, folder, "--data.batch_size=3", steps=2)
    assert train.main(args) == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("mmrope train: error:"))
    assert line == (f"mmrope train: error: {index}: shard 0 {url!r} is a pipe: command: refused (an index may name "
                    "only files inside its own folder; data.shards.trust_index: true, or --trust-shard-index, lets an "
                    "index you trust name URLs, pipe: commands and other paths)")
    assert "Traceback" not in err and not pwned.exists()
    assert mmrope_main(["eval", "--ckpt", str(trained_checkpoint), "--data", str(folder), "--n", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mmrope eval: error: {index}: shard 0 {url!r} is a pipe: command: refused") and \
        err.count("\n") == 1 and not pwned.exists()
    trusted = read_shard_set(folder, trust=True)  # the switch: the command runs, as `pipe:aws s3 cp` would
    assert len([s for b in ShardStream(trusted, TRANSFORM, train=False, batch_size=6) for s in b]) == 6
    assert pwned.exists()


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "https", "gs", "s3", "link"])
def test_an_index_names_only_files_inside_its_folder(tmp_path, kind):
    """Absolute paths, `..`, URLs and a symbolic link out of the folder are refused with one line naming the index,
    the shard and the switch, and allowed by it; a local shard that is missing is named when the index is read."""
    folder = shapes_shards(tmp_path / "data/train", 6, per_shard=3)
    other = shapes_shards(tmp_path / "elsewhere", 3, per_shard=3)
    url, why = {"absolute": (str(other / "000000.tar"), f"outside {folder}"),
                "dotdot": ("../../elsewhere/000000.tar", f"outside {folder}"),
                "https": ("https://example.com/000000.tar", "a URL"),
                "gs": ("gs://bucket/000000.tar", "a URL"), "s3": ("s3://bucket/000000.tar", "a URL"),
                "link": ("linked.tar", f"outside {folder}")}[kind]
    (folder / "linked.tar").symlink_to(other / "000000.tar")
    spec = _rewrite_index(folder, url=url)
    with pytest.raises(ValueError) as e:
        read_shard_set(spec)
    message = str(e.value)
    assert message.startswith(f"{spec}: shard 0 {url!r} is {why}: refused") and "\n" not in message
    assert "data.shards.trust_index: true, or --trust-shard-index" in message
    if kind in ("absolute", "dotdot", "link"):
        shard_set = read_shard_set(folder, trust=True)
        assert len([s for b in ShardStream(shard_set, TRANSFORM, train=False, batch_size=6) for s in b]) == 6
    with pytest.raises(ValueError, match="'000000.tar' is a URL, as the index is: refused"):
        resolve_entry("https://example.com/train/index.json", "shard 0", "000000.tar")
    assert resolve_entry("https://example.com/train/index.json", "shard 0", "000000.tar", trust=True) == \
        "https://example.com/train/000000.tar"
    (folder / "000001.tar").unlink()
    _rewrite_index(folder, url="000000.tar")
    with pytest.raises(ShardError, match=f"000001.tar: shard missing \\(no such file; {folder / 'index.json'} lists"):
        read_shard_set(folder)


def test_a_captions_file_outside_the_folder_never_reaches_the_tokenizer(tmp_path, capsys):
    """An index naming another file of the machine as its captions: training stops in one line before the word
    tokenizer (which every checkpoint stores) reads it; `../` and a link out of the folder alike."""
    secret = tmp_path / "sec/credentials"
    secret.parent.mkdir()
    secret.write_text("[default]\naws_secret_access_key = wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY\n")
    folder = shapes_shards(tmp_path / "train", 6, per_shard=3)
    (folder / "link.txt").symlink_to(secret)
    for captions in (str(secret), "../sec/credentials", "link.txt"):
        index = _rewrite_index(folder, captions=captions)
        root = tmp_path / f"run{len(captions)}"
        assert train.main(tiny_shard_args(root, folder, folder, "--data.batch_size=3", steps=2)) == 1
        err = capsys.readouterr().err
        assert f"mmrope train: error: {index}: captions {captions!r} is outside {folder}: refused" in err
        assert "Traceback" not in err and not (root / "checkpoints").exists()
    assert "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY" in " ".join(read_shard_set(folder, trust=True).read_captions())


def test_shard_and_index_refuse_to_overwrite(tmp_path, capsys):
    """`mmrope data shard` into a folder holding the user's captions.txt, `mmrope data index` over an index: one
    line naming what would be overwritten, nothing touched; --overwrite replaces only the files they write."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "captions.txt").write_text("my own captions\n")
    (out / "keep.tar").write_bytes(b"not ours")
    shard = ["data", "shard", "shapes", "--n", "4", "--size", "16", "--samples-per-shard", "2", "--out", str(out)]
    assert mmrope_main(shard) == 1
    assert capsys.readouterr().err == (f"mmrope data: error: {out}: holds captions.txt, which writing shards there "
                                       "would overwrite: write to a new folder, or pass --overwrite\n")
    assert (out / "captions.txt").read_text() == "my own captions\n" and not (out / "000000.tar").exists()
    assert mmrope_main([*shard, "--overwrite"]) == 0 and read_shard_set(out).num_samples == 4
    assert mmrope_main([*shard[:3], "--n", "2", *shard[5:]]) == 1
    assert (f"{out}: holds index.json, captions.txt and 2 shards (000000.tar ... 000001.tar), which writing shards "
            "there would overwrite") in capsys.readouterr().err
    assert mmrope_main([*shard[:3], "--n", "2", *shard[5:], "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["000000.tar", "keep.tar"]  # the old set's 000001.tar went
    assert (out / "keep.tar").read_bytes() == b"not ours"
    before = (out / "index.json").read_bytes()
    index = ["data", "index", str(out / "000000.tar"), "--out", str(out / "index.json")]
    assert mmrope_main(index) == 1
    assert (f"{out}: holds index.json and captions.txt, which indexing there would overwrite: choose another --out, "
            "or pass --overwrite") in capsys.readouterr().err
    assert (out / "index.json").read_bytes() == before
    assert mmrope_main([*index, "--overwrite"]) == 0 and read_shard_set(out).num_samples == 2


def test_mmrope_data_index_refuses_what_its_index_could_not_name(tmp_path, capsys):
    """Shards outside the index's folder or given as pipe: commands make an index that readers refuse: `mmrope
    data index` says so before reading any, unless --trust-shard-index."""
    folder = shapes_shards(tmp_path / "shards", 4, per_shard=2)
    out = tmp_path / "idx/index.json"
    pwned = tmp_path / "PWNED"
    for url, why in ((str(folder / "000000.tar"), f"outside {out.parent}"),
                     (f"pipe:touch {pwned}; cat {folder / '000000.tar'}", "a pipe: command")):
        assert mmrope_main(["data", "index", url, "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"mmrope data: error: {out}: shard {url!r} is {why}: refused")
        assert "--trust-shard-index" in err and err.count("\n") == 1
        assert not out.exists() and not pwned.exists()
    assert mmrope_main(["data", "index", url, "--out", str(out), "--trust-shard-index"]) == 0 and pwned.exists()
    assert read_shard_set(out, trust=True).num_samples == 2


def test_a_malformed_scene_in_a_shard_sample_skips_it_with_one_line(tmp_path, caplog):
    folder = tmp_path / "scenes"
    folder.mkdir()
    good = json.dumps({"captions": ["red square"], "scene": next(shapes_samples(1, size=16)).scene}).encode()
    _write_tar(folder / "00000.tar", [("000.png", _png()), ("000.json", good), ("001.png", _png()),
                                      ("001.json", b'{"captions": ["red"], "scene": {"objects": 5}}'),
                                      ("002.png", _png()), ("002.json", b'{"captions": ["red"], "scene": "x"}')])
    _index(folder, {"00000.tar": 3})
    loader = ShardLoader(stream(folder, batch_size=3, train=False), CaptionCollator(build_tokenizer("byte")))
    with caplog.at_level(logging.WARNING, logger="mmrope.data"):
        (batch,) = list(loader)
    assert batch["num_skipped"] == 2 and batch["scenes"][0]["level"] == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert f"{folder / '00000.tar'} 001.json: 'scene' is not a shapes scene" in warnings[0]
    assert f"{folder / '00000.tar'} 002.json: 'scene' is not a shapes scene" in warnings[1]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)


DDP_SCRIPT = """
import json, os, signal, sys
sys.path.insert(0, {root!r})
from mmrope.train import cli as train
from mmrope.train.module import CaptionModule

original = CaptionModule.training_step
STOP_AT = int(os.environ.get("STOP_AT", "-1"))

def training_step(self, batch, batch_idx):
    with open({out!r} + f"/steps_rank{{self.global_rank}}.jsonl", "a") as f:
        f.write(json.dumps([self.global_step, self.current_epoch, batch["ids"]]) + "\\n")
    if self.global_step == STOP_AT and self.global_rank == 0:
        os.kill(os.getpid(), signal.SIGTERM)
    return original(self, batch, batch_idx)

CaptionModule.training_step = training_step
sys.exit(train.main(sys.argv[1:]))
"""


def test_two_gloo_processes_read_each_key_once_per_epoch_across_a_sigterm(tmp_path):
    """23 samples in shards of 7, 7, 7 and 2 over 2 ranks x 2 workers, batches of 4 (3 steps an epoch, the ranks
    12 and 11 samples): SIGTERM in epoch 1, resume; every epoch's keys are seen once over both ranks, and the
    steps are those of the uninterrupted plan."""
    folder = shapes_shards(tmp_path / "train", 23, per_shard=7)
    val = shapes_shards(tmp_path / "val", 4, per_shard=4, split="val")
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(root=str(ROOT), out=str(tmp_path))))
    args = tiny_shard_args(tmp_path / "run", folder, val, "--trainer.strategy=ddp", "--trainer.devices=2",
                           "--data.batch_size=4", "--data.num_workers=2", "--trainer.limit_val_batches=0",
                           "--data.shards.shuffle_window=5", steps=8)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STOP_AT": "4"}
    run = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 143, run.stderr[-3000:]
    run = subprocess.run([sys.executable, str(script), *args, "--ckpt_path=last"], cwd=tmp_path,
                         env={**env, "STOP_AT": "-1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    steps = {r: [json.loads(line) for line in (tmp_path / f"steps_rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)}
    for r in (0, 1):
        assert [s[0] for s in steps[r]] == list(range(8))  # each step once: stopped after 4, resumed at 5
    by_epoch: dict[int, Counter] = {}
    for r in (0, 1):
        for _, epoch, ids in steps[r]:
            by_epoch.setdefault(epoch, Counter()).update(ids)
    every = {f"train/{i}" for i in range(23)}
    assert set(by_epoch[0]) == set(by_epoch[1]) == every and set(by_epoch[0].values()) == {1}
    assert set(by_epoch[1].values()) == {1}
    for r in (0, 1):  # the same batches as an uninterrupted run
        plan = stream(folder, rank=r, world_size=2, num_workers=2, batch_size=4, shuffle_window=5)
        expected = [ids for e in range(3) for ids in epoch_ids(plan, e, workers=2)][:8]
        assert [s[2] for s in steps[r]] == expected
