"""How an error is said: on one line. torch's, yaml's and many libraries' messages span several lines; a message of
mmrope names the file or key, then the reason in a few words, which is often another library's message put here."""

from __future__ import annotations


def one_line(err: BaseException | str, limit: int | None = None) -> str:
    """``err``'s message with every run of whitespace as one space, cut to ``limit`` characters (ending in "...")
    when longer; an exception that says nothing is named by its type."""
    text = " ".join(str(err).split())
    if not text and isinstance(err, BaseException):
        text = type(err).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
