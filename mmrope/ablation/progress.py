"""``OUT/ablate.log``: what ``mmrope ablate`` says on stderr (which run started, exited, failed or resumed, and when),
kept in the grid's folder with the time of each line, so the record of a long grid outlives the terminal that ran it.
Appended to, never truncated: a grid resumed into the same folder adds to its story."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

LOG_FILE = "ablate.log"


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


class _Tee:
    """A text stream that writes through to ``stream`` and appends each complete line to ``log``, stamped (UTC)."""

    def __init__(self, stream: TextIO, log: TextIO):
        self.stream, self.log, self.partial = stream, log, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        *lines, self.partial = (self.partial + text).split("\n")
        stamp = _stamp()
        for line in lines:
            self.log.write(f"{stamp} {line}\n")
        if lines:
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding: the terminal's
        return getattr(self.stream, name)


@contextmanager
def progress_kept_in(out: Path) -> Iterator[None]:
    """While inside, stderr is also appended to ``out / ablate.log``."""
    with open(out / LOG_FILE, "a", encoding="utf-8") as log:
        sys.stderr, stream = _Tee(sys.stderr, log), sys.stderr
        try:
            yield
        finally:
            tee, sys.stderr = sys.stderr, stream
            if tee.partial:
                log.write(f"{_stamp()} {tee.partial}\n")
