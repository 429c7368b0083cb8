"""Image-caption sets saved with Hugging Face ``datasets``, read with pyarrow alone (``pip install
'mmrope[datasets]'``; the ``datasets`` library itself is not needed):

- a ``save_to_disk`` folder: ``state.json`` (its Arrow files, in order), ``dataset_info.json`` and
  ``data-00000-of-0000N.arrow`` (Arrow IPC streams, memory-mapped: only the captions are read into memory). A
  ``DatasetDict`` folder (``dataset_dict.json``) holds one such folder per split: name the split's folder;
- parquet files (``Dataset.to_parquet``, the Hub's ``data/train-00000-of-00004.parquet``): one file, or a pattern
  (``data/train-*.parquet``, files read in name order); a parquet file's images are read whole, once per process;
- a single ``.arrow`` file (a ``datasets`` cache file).

The image column (default ``image``) holds ``datasets``' ``Image`` feature, a struct of ``bytes`` and ``path``, or
raw bytes, or a path string. Bytes are decoded when the sample is drawn by :func:`mmrope.data.images.image_from_bytes`,
with its pixel limit, as any image file; a row with only a path names a file that must stay inside the dataset's
folder (:func:`mmrope.data.captions.inside`). The caption column (default the first of ``caption``, ``text``,
``captions``) holds a string or a list of strings. A row without a caption or an image is skipped with one warning
naming the file and row; an image that does not decode is skipped when it is drawn, as a bad image file is. One row
is one image: a set with a row per caption trains each row as its own sample.
"""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageError, image_from_bytes
from mmrope.errors import one_line

log = logging.getLogger(__name__)

IMAGE_COLUMN = "image"  # datasets' Image feature, as every image-caption set on the Hub names it
CAPTION_COLUMNS = ("caption", "text", "captions")  # tried in this order when no caption column is named
MAX_ROW_WARNINGS = 10  # bad rows named one by one; the rest are counted in one line


def is_hf_dataset(path: str | Path) -> bool:
    """Whether ``path`` is a ``save_to_disk`` folder (or a DatasetDict's), a ``.parquet`` / ``.arrow`` file or a
    pattern of them."""
    path = Path(path)
    if path.is_dir():
        return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    return path.suffix in (".parquet", ".arrow")


def data_files(path: str | Path, allow_outside: bool = False) -> tuple[list[Path], Path]:
    """The Arrow or parquet files of a dataset, in row order, and the folder a row's image path is relative to."""
    from mmrope.data.captions import inside, read_utf8

    path = Path(path)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() and not (path / "state.json").is_file():
            splits = _json(path / "dataset_dict.json", read_utf8).get("splits") or []
            raise ValueError(f"{path}: a DatasetDict of splits {', '.join(map(str, splits))}: give one split's folder"
                             + (f" ({path / str(splits[0])})" if splits else ""))
        state = path / "state.json"
        entries = _json(state, read_utf8).get("_data_files")
        if not isinstance(entries, list) or not entries or not all(
                isinstance(e, dict) and isinstance(e.get("filename"), str) for e in entries):
            raise ValueError(f"{state}: no '_data_files' list of {{\"filename\": ...}} (not a datasets save_to_disk "
                             "folder?)")
        files = [inside(path, e["filename"], state, allow_outside) for e in entries]
        root = path
    elif any(c in str(path) for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path)))
        if not files:
            raise ValueError(f"{path}: no file matches this pattern")
        root = files[0].parent
    else:
        files, root = [path], path.parent
    for file in files:
        if file.suffix not in (".arrow", ".parquet"):
            raise ValueError(f"{file}: expected an .arrow or a .parquet file")
        if not file.is_file():
            raise ValueError(f"{file}: no such file" + (f" ({path / 'state.json'} lists it)" if path.is_dir() else ""))
    return files, root


def load_hf_records(path: str | Path, image_column: str | None = None, caption_column: str | None = None,
                    allow_outside: bool = False) -> list:
    """Caption records (:class:`mmrope.data.captions.CaptionRecord`) of a Hugging Face dataset on disk; each
    image is an :class:`ArrowImage` (bytes in the file) or a path inside the dataset's folder. The ids are the
    rows' numbers in the whole dataset, as ``dataset[i]`` numbers them."""
    from mmrope.data.captions import CaptionRecord, inside

    pa = _pyarrow(path)
    files, root = data_files(path, allow_outside)
    records, bad, offset = [], _BadRows(path), 0
    for file in files:
        images, captions = _columns(file, column_names(file), image_column, caption_column)
        table = read_table(file, [images, captions])
        held, paths = _image_kinds(pa, file, table.column(images), images)
        _check_captions(pa, file, table.column(captions).type, captions)
        source = ArrowColumn(file, images, table)
        for row, (text, in_file, name) in enumerate(zip(table.column(captions).to_pylist(), held, paths)):
            where = f"{file} row {row}"
            caps = [c.strip() for c in ([text] if isinstance(text, str) else text or []) if c and c.strip()]
            if not caps:
                bad.skip(where, f"no caption in column {captions!r}")
            elif in_file:
                records.append(CaptionRecord(ArrowImage(source, row), caps, str(offset + row)))
            elif name:
                records.append(CaptionRecord(inside(root, name, where, allow_outside), caps, str(offset + row)))
            else:
                bad.skip(where, f"no image in column {images!r}")
        offset += table.num_rows
    bad.summary()
    if not records:
        raise ValueError(f"{path}: no row with both an image and a caption ({bad.count} skipped)")
    return records


def column_names(file: Path) -> list[str]:
    return read_table(file, schema_only=True).names


def read_table(file: Path, columns: list[str] | None = None, schema_only: bool = False):
    """``columns`` of one Arrow file (memory-mapped: nothing is copied) or parquet file (read into memory), or its
    schema; a file that is not one is one line naming it."""
    pa = _pyarrow(file)
    import pyarrow.parquet as pq

    try:
        if file.suffix == ".parquet":
            return pq.read_schema(file) if schema_only else pq.read_table(file, columns=columns)
        source = pa.memory_map(str(file))
        try:  # datasets writes IPC streams; an IPC file (the random-access format) reads too
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(source).read_all()
        return table.schema if schema_only else table if columns is None else table.select(columns)
    except pa.ArrowInvalid as e:
        kind = "a parquet" if file.suffix == ".parquet" else "an Arrow"
        raise ValueError(f"{file}: not {kind} file ({one_line(e, 200)})") from None
    except OSError as e:
        raise ValueError(f"{file}: cannot read ({one_line(e, 200)})") from None


class ArrowColumn:
    """One column of one Arrow or parquet file, opened again in each process that needs it: a DataLoader worker
    started by spawn gets the file's name, not its data."""

    def __init__(self, file: Path, column: str, table=None):
        self.file, self.column = file, column
        self._values = None if table is None else table.column(column)

    def __getstate__(self) -> dict:
        return {"file": self.file, "column": self.column, "_values": None}

    def value(self, row: int):
        if self._values is None:
            self._values = read_table(self.file, [self.column]).column(self.column)
        return self._values[row].as_py()


@dataclass(frozen=True, slots=True, repr=False)
class ArrowImage:
    """An image held in row ``row`` of a dataset's image column: a :class:`CaptionRecord`'s image, beside paths."""

    source: ArrowColumn
    row: int

    def __str__(self) -> str:
        return f"{self.source.file} row {self.row}"

    def __repr__(self) -> str:
        return f"ArrowImage('{self}')"

    def read_bytes(self) -> bytes:
        value = self.source.value(self.row)
        data = value.get("bytes") if isinstance(value, dict) else value
        if not data:
            raise ImageError(self, "empty file")
        return data

    def load(self, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        """The decoded RGB image, as :func:`mmrope.data.images.load_image` opens a file; errors name the row."""
        return image_from_bytes(self.read_bytes(), str(self), max_pixels)


def _columns(file: Path, names: list[str], image: str | None, caption: str | None) -> tuple[str, str]:
    found = ", ".join(names)
    image = image or IMAGE_COLUMN
    if image not in names:
        raise ValueError(f"{file}: no image column {image!r} (its columns: {found}); name it with "
                         "data.captions.image_column or --image-column")
    if caption is None:
        caption = next((c for c in CAPTION_COLUMNS if c in names), None)
        if caption is None:
            raise ValueError(f"{file}: no caption column (looked for {', '.join(map(repr, CAPTION_COLUMNS))}; its "
                             f"columns: {found}); name it with data.captions.caption_column or --caption-column")
    elif caption not in names:
        raise ValueError(f"{file}: no caption column {caption!r} (its columns: {found}); name it with "
                         "data.captions.caption_column or --caption-column")
    return image, caption


def _image_kinds(pa, file: Path, column, name: str) -> tuple[list[bool], list[str | None]]:
    """Per row: whether the file holds the image's bytes, and the image's path (or None)."""
    import pyarrow.compute as pc

    kind = column.type
    binary = (pa.types.is_binary, pa.types.is_large_binary)
    strings = (pa.types.is_string, pa.types.is_large_string)
    if pa.types.is_struct(kind) and "bytes" in [f.name for f in kind]:
        held = pc.invert(pc.is_null(pc.struct_field(column, "bytes"))).to_pylist()
        held = [h and not row for h, row in zip(held, column.is_null().to_pylist())]
        paths = (pc.struct_field(column, "path").to_pylist() if "path" in [f.name for f in kind]
                 else [None] * len(column))
        return held, paths
    if any(is_(kind) for is_ in binary):
        return pc.invert(column.is_null()).to_pylist(), [None] * len(column)
    if any(is_(kind) for is_ in strings):
        return [False] * len(column), column.to_pylist()
    raise ValueError(f"{file}: column {name!r} holds {kind}: expected images (datasets' Image feature, a struct of "
                     "bytes and path), bytes or file paths")


def _check_captions(pa, file: Path, kind, name: str) -> None:
    text = (pa.types.is_string, pa.types.is_large_string)
    lists = (pa.types.is_list, pa.types.is_large_list)
    if not (any(is_(kind) for is_ in text)
            or any(is_(kind) for is_ in lists) and any(is_(kind.value_type) for is_ in text)):
        raise ValueError(f"{file}: column {name!r} holds {kind}: expected a string or a list of strings")


class _BadRows:
    """Skipped rows: the first few named one per line, the rest counted."""

    def __init__(self, path):
        self.path, self.count = path, 0

    def skip(self, where: str, reason: str) -> None:
        self.count += 1
        if self.count <= MAX_ROW_WARNINGS:
            log.warning("skipping bad row %s: %s", where, reason)

    def summary(self) -> None:
        if self.count > MAX_ROW_WARNINGS:
            log.warning("skipping %d more bad rows of %s (%d in all)", self.count - MAX_ROW_WARNINGS, self.path,
                        self.count)


def _pyarrow(path):
    try:
        import pyarrow
    except ImportError:
        raise ValueError(f"{path}: reading a Hugging Face dataset needs pyarrow: pip install 'mmrope[datasets]' "
                         "(or pip install pyarrow)") from None
    return pyarrow


def _json(path: Path, read_utf8) -> dict:
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data

