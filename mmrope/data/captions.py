"""Real caption data: COCO captions JSON, an imagefolder ``metadata.jsonl``, a CSV, or a Hugging Face dataset on disk
(``save_to_disk`` folder or parquet: :mod:`mmrope.data.hf_datasets`), all read into one record list.

Every loader returns ``CaptionRecord``s (an image path and all its captions); ``CaptionDataset`` turns them into
samples. All captions of an image stay in ``references`` for evaluation; training draws one per (seed, epoch,
index), so a resumed run sees the same captions.

A bad image does not stop training: ``__getitem__`` counts it in ``num_skipped`` and returns a ``Skipped`` naming
the file and the reason, which ``CaptionCollator`` drops and counts in the batch's ``"num_skipped"`` (with DataLoader
workers the dataset's own counter lives in another process), and the loader
(:class:`mmrope.data.loader.SkipWarningLoader`) says once in the main process. ``on_bad_image="raise"`` raises the
``ImageError`` instead.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from torch.utils.data import Dataset

from mmrope.data.collate import Skipped
from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageError, ImageTransform, load_image, sample_rng
from mmrope.data.shapes import check_scene

if TYPE_CHECKING:
    from mmrope.data.hf_datasets import ArrowImage


@dataclass
class CaptionRecord:
    image: Path | ArrowImage  # a file, or an image held in a dataset's Arrow / parquet file
    captions: list[str]
    id: str
    scene: dict | None = field(default=None)  # a shapes scene, when the data was exported by ``mmrope data shapes``


def _captions(value, where: str) -> list[str]:
    captions = [value] if isinstance(value, str) else value
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise ValueError(f"{where}: 'text' must be a non-empty string or list of strings, got {value!r}")
    return [c.strip() for c in captions]


def read_utf8(path: Path) -> str:
    """The text of ``path``; a byte-order mark (as Excel writes) is dropped, and anything that is not UTF-8 is one
    line naming the file and the line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8"
                         ) from None


def inside(root: Path, name: str, where: str, allow_outside: bool = False) -> Path:
    """``root / name``, refused unless it stays inside ``root`` (after ``..`` and symbolic links): a dataset must
    not make training or evaluation read any file of the machine. ``allow_outside`` turns the check off."""
    path = root / name
    if allow_outside:
        return path
    if Path(name).is_absolute() or os.path.commonpath([root.resolve(), path.resolve()]) != str(root.resolve()):
        raise ValueError(f"{where}: {name!r} points outside {root}: refused (a dataset reads only inside its folder; "
                         "data.allow_outside_paths: true, or --allow-outside-paths, allows it)")
    return path


def load_coco(
    captions_json: str | Path,
    image_dir: str | Path,
    karpathy_split: str | Path | None = None,
    split: Literal["train", "val", "test"] | None = None,
    allow_outside: bool = False,
) -> list[CaptionRecord]:
    """Records from a COCO ``captions_*.json`` (``images`` and ``annotations``), images under ``image_dir``.

    With ``karpathy_split`` (Karpathy's ``dataset_coco.json``) and ``split``, keep only the images of that split
    ("train" includes Karpathy's "restval"). The Karpathy splits draw on both train2014 and val2014, so load each
    captions file with its own image folder and concatenate the lists. A ``file_name`` that leads outside
    ``image_dir`` is refused (see :func:`inside`).
    """
    captions_json, image_dir = Path(captions_json), Path(image_dir)
    data = _read_json(captions_json)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{captions_json}: not a COCO captions file (needs 'images' and 'annotations')")
    by_image: dict[int, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        if "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise ValueError(f"{captions_json}: annotation {i} needs 'image_id' and a 'caption' string")
        by_image.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    keep = None
    if split is not None:
        if karpathy_split is None:
            raise ValueError(f"{captions_json}: split={split!r} needs a karpathy_split file")
        keep = _karpathy_ids(Path(karpathy_split), split)
    elif karpathy_split is not None:
        raise ValueError(f"{karpathy_split}: a Karpathy split file needs split='train', 'val' or 'test'")
    records = []
    for img in sorted(data["images"], key=lambda im: im["id"]):
        if img["id"] in by_image and (keep is None or img["id"] in keep):
            path = inside(image_dir, str(img["file_name"]), f"{captions_json}: image {img['id']}", allow_outside)
            records.append(CaptionRecord(path, by_image[img["id"]], f"coco/{img['id']}"))
    return records


def _karpathy_ids(path: Path, split: str) -> set:
    if split not in ("train", "val", "test"):
        raise ValueError(f"{path}: split must be 'train', 'val' or 'test', got {split!r}")
    wanted = {"train", "restval"} if split == "train" else {split}
    images = _read_json(path).get("images", [])
    return {im["cocoid"] for im in images if im.get("split") in wanted}


def load_imagefolder(directory: str | Path, allow_outside: bool = False) -> list[CaptionRecord]:
    """Records from ``directory/metadata.jsonl`` (Hugging Face imagefolder): one JSON object a line with
    ``file_name`` (relative to the folder, and inside it: see :func:`inside`) and ``text`` (a caption or a list of
    them); extra keys are ignored except ``scene``, which ``mmrope data shapes`` writes (checked: see
    :func:`mmrope.data.shapes.check_scene`)."""
    directory = Path(directory)
    meta = directory / "metadata.jsonl"
    if not meta.is_file():
        raise ValueError(f"{directory}: no metadata.jsonl in this folder")
    records = []
    for n, line in enumerate(read_utf8(meta).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{meta} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
        name = row.get("file_name") if isinstance(row, dict) else None
        if not name or not isinstance(name, str):
            raise ValueError(f"{where}: needs a 'file_name' string")
        path = inside(directory, name, where, allow_outside)
        scene = row.get("scene")
        records.append(CaptionRecord(path, _captions(row.get("text"), where), name,
                                     None if scene is None else check_scene(scene, where)))
    return records


def load_csv(path: str | Path, image_dir: str | Path | None = None, allow_outside: bool = False
             ) -> list[CaptionRecord]:
    """Records from a CSV with a header and columns ``file_name,text`` (UTF-8, with or without the byte-order mark
    Excel writes); several rows for one file give several captions. Images are looked up in ``image_dir`` (default:
    the CSV's folder) and must stay inside it (see :func:`inside`)."""
    path = Path(path)
    image_dir = Path(image_dir) if image_dir is not None else path.parent
    by_file: dict[str, list[str]] = {}
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    missing = {"file_name", "text"} - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; the header must have file_name,text")
    where = {}
    for row in reader:
        n = reader.line_num
        if not row["file_name"]:
            raise ValueError(f"{path} line {n}: empty file_name")
        where.setdefault(row["file_name"], f"{path} line {n}")
        by_file.setdefault(row["file_name"], []).extend(_captions(row["text"], f"{path} line {n}"))
    return [CaptionRecord(inside(image_dir, name, where[name], allow_outside), caps, name)
            for name, caps in by_file.items()]


def load_caption_records(path: str | Path, image_dir: str | Path | None = None, allow_outside: bool = False,
                         image_column: str | None = None, caption_column: str | None = None,
                         **coco_kwargs) -> list[CaptionRecord]:
    """Pick the loader from the path: a Hugging Face ``save_to_disk`` folder, a ``.parquet`` or ``.arrow`` file (or
    a pattern of them) -> :func:`mmrope.data.hf_datasets.load_hf_records` (``image_column``, ``caption_column``), any
    other folder or a ``.jsonl`` -> imagefolder, ``.csv`` -> CSV, ``.json`` -> COCO (images in ``image_dir``, default
    the JSON's folder). ``allow_outside``: see :func:`inside`."""
    from mmrope.data.hf_datasets import is_hf_dataset, load_hf_records

    path = Path(path)
    if is_hf_dataset(path):
        return load_hf_records(path, image_column, caption_column, allow_outside)
    if path.is_dir():
        return load_imagefolder(path, allow_outside)
    if path.suffix == ".jsonl":
        if path.name != "metadata.jsonl":
            raise ValueError(f"{path}: an imagefolder's captions file must be named metadata.jsonl")
        return load_imagefolder(path.parent, allow_outside)
    if path.suffix == ".csv":
        return load_csv(path, image_dir, allow_outside)
    if path.suffix == ".json":
        return load_coco(path, image_dir if image_dir is not None else path.parent, allow_outside=allow_outside,
                         **coco_kwargs)
    raise ValueError(f"{path}: expected a folder with metadata.jsonl, a .csv, a COCO .json captions file, a Hugging "
                     "Face save_to_disk folder or a .parquet file")


def load_record_image(image: Path | ArrowImage, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """A record's image as 8-bit RGB: a file (:func:`load_image`) or bytes in a dataset's file; ``ImageError``s
    name the file, or the file and row."""
    return load_image(image, max_pixels) if isinstance(image, str | Path) else image.load(max_pixels)


def _read_json(path: Path):
    try:
        return json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None


class CaptionDataset(Dataset):
    """Samples ``{"image": (3, H, W) float, "caption": str, "references": list[str], "scene": dict | None,
    "id": str}`` from caption records, or a ``Skipped`` for a bad image (see the module docstring).

    ``train=True`` picks one caption per (seed, epoch, index); otherwise the first. Call ``set_epoch`` each epoch.
    """

    def __init__(
        self,
        records: list[CaptionRecord],
        transform: ImageTransform | None = None,
        train: bool = True,
        seed: int = 0,
        on_bad_image: Literal["skip", "raise"] = "skip",
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        if on_bad_image not in ("skip", "raise"):
            raise ValueError(f"on_bad_image must be 'skip' or 'raise', got {on_bad_image!r}")
        if not records:
            raise ValueError("CaptionDataset needs at least one record")
        self.records = list(records)
        self.transform = transform if transform is not None else ImageTransform()
        self.train, self.seed, self.on_bad_image, self.max_pixels = train, seed, on_bad_image, max_pixels
        self.epoch = 0
        self.num_skipped = 0  # bad images met in this process

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict | Skipped:
        rec = self.records[index]
        rng = sample_rng(self.seed, self.epoch, index, "captions")
        try:
            img = load_record_image(rec.image, self.max_pixels)
        except ImageError as e:
            if self.on_bad_image == "raise":
                raise
            self.num_skipped += 1
            return Skipped(f"bad image {e}")
        caption = rng.choice(rec.captions) if self.train else rec.captions[0]
        image = self.transform(img, rng if self.transform.augment else None)
        return {"image": image, "caption": caption, "references": list(rec.captions), "scene": rec.scene,
                "id": rec.id}
