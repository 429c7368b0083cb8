"""The shard index: ``index.json`` read into a :class:`ShardSet`, and the rule of what an index may name.

An index lists the shards of a split and their sample counts, and names a file of every caption, one a line, for
the word tokenizer (the format: data/README.md, "Shards"). It is a data file that arrives with a dataset, so by
default a shard's ``url`` and the ``captions`` file must be files inside the index's folder (after ``..`` and
symbolic links: :func:`resolve_entry`), checked to exist when the index is read; an index one trusts may name
anything ``webdataset.gopen`` opens.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from mmrope.errors import one_line

INDEX_FORMAT = "mmrope-shards"


class ShardError(ValueError):
    """A shard that cannot be read as its index says: one line naming it. Stops the run."""



@dataclass(frozen=True)
class Shard:
    url: str
    samples: int | None  # None: not counted yet (`mmrope data index` counts it)


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split, in index order, and the file of all their captions (None when unknown)."""

    shards: tuple[Shard, ...]
    where: str
    captions: str | None = None

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def read_captions(self) -> list[str]:
        """Every caption of the set, for the word tokenizer's vocabulary."""
        if self.captions is None:
            raise ValueError(f"{self.where}: the index names no captions file, which the word tokenizer is built "
                             "from: re-index with `mmrope data index`, or set data.tokenizer to byte or to a "
                             "tokenizer.json")
        try:
            with open_url(self.captions) as f:
                text = f.read()
        except OSError as e:
            raise ValueError(f"{self.captions}: cannot read the captions file ({e.strerror or e})") from None
        try:
            return [line for line in text.decode("utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.captions}: not UTF-8 text (byte {e.start})") from None


def is_url(name: str) -> bool:
    """Whether ``name`` is a URL (or a ``pipe:`` command) rather than a local path."""
    return len(urlparse(name).scheme) > 1  # a drive letter is not a scheme


def open_url(url: str):
    """A binary stream of a local path or, through ``webdataset.gopen``, of a URL or ``pipe:`` command. A local
    path never reaches gopen, so a file named ``-`` or ``pipe:x`` is read as a file, not stdin or a command."""
    if is_url(url):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    return open(url, "rb")


def _outside(folder: str, url: str) -> str | None:
    """Why an index in ``folder`` may not name ``url`` untrusted (None when it may): only files inside the
    folder, after ``..`` and symbolic links, are read from an index nobody vouched for."""
    if url.startswith("pipe:"):
        return "a pipe: command"
    if is_url(url):
        return "a URL"
    if is_url(folder):
        return "a URL, as the index is"
    if "\0" in url:
        return "not a path"
    root = os.path.realpath(folder)
    if os.path.commonpath([root, os.path.realpath(os.path.join(folder, url))]) != root:
        return f"outside {folder}"
    return None


def resolve_entry(index: str, entry: str, url: str, trust: bool = False) -> str:
    """What the shard index ``index`` means by ``url`` (its ``entry``: a shard or the captions file): a path
    inside the index's folder, joined to it. Anything else (a URL, a ``pipe:`` command, an absolute path or one
    that leads out of the folder, also through a link) is refused in one line unless ``trust``, and then taken
    as given (relative paths still relative to the index). Every reader of an index goes through here."""
    folder = index.rsplit("/", 1)[0] if is_url(index) else os.path.dirname(index) or "."
    why = None if trust else _outside(folder, url)
    if why is not None:
        raise ValueError(f"{index}: {entry} {url!r} is {why}: refused (an index may name only files inside its "
                         "own folder; data.shards.trust_index: true, or --trust-shard-index, lets an index you "
                         "trust name URLs, pipe: commands and other paths)")
    if is_url(url) or os.path.isabs(url):
        return url
    if is_url(folder):
        return folder + "/" + url
    return os.path.join(folder, url)  # not normalised: ``./pipe:x`` stays a path


def read_shard_set(spec: str | Path, trust: bool = False) -> ShardSet:
    """The shards an index names: ``spec`` is an ``index.json`` (a path or URL) or a folder holding one. Its
    entries go through :func:`resolve_entry` (``trust``: see there); a local shard that does not exist is one
    line naming it and the index, now rather than when an epoch reaches it."""
    spec = str(spec)
    if not is_url(spec) and Path(spec).is_dir():
        spec = str(Path(spec) / "index.json")
    if not spec.endswith(".json"):
        raise ValueError(f"{spec}: expected a shard index (index.json, as `mmrope data shard` or `mmrope data index` "
                         "write) or a folder holding one")
    try:
        with open_url(spec) as f:
            index = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{spec}: no such shard index") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{spec}: cannot read the shard index ({one_line(e)})") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or not isinstance(index.get("shards"), list):
        raise ValueError(f"{spec}: not a shard index (expected a JSON object with \"format\": \"{INDEX_FORMAT}\" and "
                         "a list of \"shards\")")
    shards = []
    for i, entry in enumerate(index["shards"]):
        url, count = (entry.get("url"), entry.get("samples")) if isinstance(entry, dict) else (None, None)
        if not isinstance(url, str) or not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"{spec}: shard {i} needs a \"url\" string and a \"samples\" count, got {entry!r}")
        shards.append(Shard(resolve_entry(spec, f"shard {i}", url, trust), count))
    if not sum(s.samples for s in shards):
        raise ValueError(f"{spec}: the index lists no samples")
    for shard in shards:
        if not is_url(shard.url) and not os.path.isfile(shard.url):
            raise ShardError(f"{shard.url}: shard missing (no such file; {spec} lists it)")
    captions = index.get("captions")
    if captions is not None and not isinstance(captions, str):
        raise ValueError(f"{spec}: \"captions\" must name a file of captions, got {captions!r}")
    return ShardSet(tuple(shards), spec, resolve_entry(spec, "captions", captions, trust) if captions else None)

