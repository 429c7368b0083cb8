"""Writing shards (``mmrope data shard``: samples -> numbered tar files, ``captions.txt`` and, last, ``index.json``)
and indexing shards written elsewhere (``mmrope data index``: img2dataset's, say).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from mmrope.data.shards.index import INDEX_FORMAT, Shard, ShardError, ShardSet, is_url, read_shard_set, resolve_entry
from mmrope.data.shards.reader import BadSample, read_shard, sample_captions
from mmrope.data.shards.sources import ShardSample

log = logging.getLogger(__name__)


def write_shards(samples: Iterable[ShardSample | str], out: str | Path, samples_per_shard: int = 1000,
                 overwrite: bool = False) -> tuple[ShardSet, list[str]]:
    """Write ``out/000000.tar ...`` (each sample as ``{key}.{ext}``, ``{key}.txt`` with the first caption, as
    img2dataset, and ``{key}.json`` with all of them, the id and the scene), ``out/captions.txt`` and, last,
    ``out/index.json``. The same samples give byte-identical files. A str among ``samples`` is a source that could
    not be read: it is skipped and returned -> (the shard set written, the reasons of the skipped). A folder that
    holds any file of those names is refused, naming them, unless ``overwrite``: then the earlier set's index and
    numbered shards are removed first, and other files are left alone."""
    from webdataset import ShardWriter

    if samples_per_shard < 1:
        raise ValueError(f"--samples-per-shard must be at least 1, got {samples_per_shard}")
    out = Path(out)
    earlier = _shard_set_files(out)
    if earlier and not overwrite:
        raise ValueError(f"{out}: holds {_listed(earlier)}, which writing shards there would overwrite: write to a "
                         "new folder, or pass --overwrite")
    for name in earlier:  # the index first: a folder with an index is a complete set
        (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Shard] = []
    skipped: list[str] = []
    captions: list[str] = []

    def finished(fname: str) -> None:
        written.append(Shard(fname, writer.count))

    writer = ShardWriter(str(out / "%06d.tar"), maxcount=samples_per_shard, maxsize=float("inf"), post=finished,
                         verbose=0, encoder=False, mtime=0, user="mmrope", group="mmrope")
    key = 0
    with writer:
        for sample in samples:
            if isinstance(sample, str):
                skipped.append(sample)
                log.warning("skipping %s", sample)
                continue
            meta = {"captions": sample.captions, "id": sample.id}
            if sample.scene is not None:
                meta["scene"] = sample.scene
            writer.write({"__key__": f"{key:09d}", sample.ext: sample.image,
                          "txt": sample.captions[0].encode("utf-8"),
                          "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")})
            captions += [" ".join(c.split()) for c in sample.captions]
            key += 1
    if not key:
        raise ValueError("no sample could be read: nothing written")
    written = [s for s in written if s.samples]  # ShardWriter opens a shard before it knows whether one comes
    kept = {Path(s.url).name for s in written}
    for extra in [n for n in _shard_set_files(out) if n.endswith(".tar") and n not in kept]:
        (out / extra).unlink()  # that empty shard: the folder held no numbered shard before this writer
    _write_index(out / "index.json", written, captions, out)
    return read_shard_set(out / "index.json"), skipped


def _shard_set_files(folder: Path) -> list[str]:
    """The files of ``folder`` that :func:`write_shards` writes: ``index.json``, ``captions.txt``, ``NNNNNN.tar``."""
    if not folder.is_dir():
        return []
    shards = sorted(p.name for p in folder.glob("*.tar") if len(p.stem) == 6 and p.stem.isdigit())
    return [n for n in ("index.json", "captions.txt") if os.path.lexists(folder / n)] + shards


def _listed(names: list[str]) -> str:
    """``index.json, captions.txt and 3 shards (000000.tar ... 000002.tar)``."""
    shards = [n for n in names if n.endswith(".tar")]
    parts = [n for n in names if not n.endswith(".tar")]
    if shards:
        parts.append(f"{len(shards)} shard{'s' * (len(shards) > 1)} ({shards[0]}"
                     f"{' ... ' + shards[-1] if len(shards) > 1 else ''})")
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]


def _index_name(url: str, folder: Path) -> str:
    """How an index in ``folder`` names ``url``: relative to the folder when inside it (after links), else as
    an absolute path; a URL as it is."""
    if is_url(url):
        return url
    try:
        return str(Path(url).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(Path(url).resolve())


def _write_index(path: Path, shards: list[Shard], captions: list[str], folder: Path) -> None:
    """``captions.txt`` and ``index.json`` (written last, through a temporary file, so a folder with an index is
    complete); local shards under ``folder`` are named relative to it."""
    index = {"format": INDEX_FORMAT, "version": 1, "samples": sum(s.samples for s in shards),
             "captions": "captions.txt", "shards": [{"url": _index_name(s.url, folder), "samples": s.samples}
                                                     for s in shards]}
    for target, text in ((folder / "captions.txt", "".join(c + "\n" for c in captions)),
                         (path, json.dumps(index, indent=1) + "\n")):
        temporary = target.with_name(f".{target.name}.tmp")  # replaced whole: a link there is not written through
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, target)


def index_shards(urls: str | list[str], out: str | Path, trust: bool = False, overwrite: bool = False
                 ) -> tuple[ShardSet, int]:
    """Count the samples of existing shards (img2dataset's, say: a brace pattern such as
    ``data/laion/{00000..00099}.tar``, expanded by webdataset) and collect their captions -> ``out`` (an
    ``index.json``) with ``captions.txt`` beside it. Reads every shard once, images skipped without decoding ->
    (the shard set, how many samples had no usable caption). Shards the index could not name untrusted (URLs,
    ``pipe:`` commands, files outside its folder: :func:`resolve_entry`) are refused before any is read unless
    ``trust``; an existing ``out`` or ``captions.txt`` beside it unless ``overwrite``."""
    from webdataset.shardlists import expand_urls

    out = Path(out)
    if out.suffix != ".json":
        raise ValueError(f"{out}: the index is a .json file (index.json)")
    names = expand_urls(urls) if isinstance(urls, str) else list(urls)
    if not names:
        raise ValueError(f"{urls}: names no shard")
    for url in names:
        resolve_entry(str(out), "shard", _index_name(url, out.parent), trust)
        if not is_url(url) and not Path(url).is_file():
            raise ShardError(f"{url}: shard missing (no such file)")
    earlier = [p.name for p in (out, out.parent / "captions.txt") if os.path.lexists(p)]
    if earlier and not overwrite:
        raise ValueError(f"{out.parent}: holds {_listed(earlier)}, which indexing there would overwrite: choose "
                         "another --out, or pass --overwrite")
    shards, captions, uncaptioned = [], [], 0
    for url in names:
        seen: dict = {}
        with_text = 0
        for sample in read_shard(Shard(url, None), select=_text_members, seen=seen):
            with_text += 1
            try:
                captions += sample_captions(sample)
            except BadSample as e:
                uncaptioned += 1
                log.warning("no usable caption: %s", e)
        count = seen["index"] + 1
        uncaptioned += count - with_text  # samples with neither .txt nor .json
        shards.append(Shard(url, count))
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_index(out, shards, captions, out.parent)
    return read_shard_set(out, trust), uncaptioned



def _text_members(ext: str) -> bool:
    return ext in ("txt", "json")
