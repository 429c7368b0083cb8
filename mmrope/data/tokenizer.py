"""Tokenizers: bytes (nothing to train) and words (trained on the training captions in a second).

Both share one interface and the reserved ids of ``mmrope.model.tokens`` (0..7), with ordinary tokens after them,
so the model never needs to know which one it was given. Neither adds special tokens in ``encode``: the collator
builds the joint sequence ``[VISION_START, IMAGE x N, VISION_END, caption ..., EOS]`` itself.

A tokenizer is saved as a small JSON file beside the checkpoint and loaded back with ``load_tokenizer``; nothing is
downloaded. The ``tokenizers`` library would give BPE, but captions of a few hundred words do not need it.
"""

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from mmrope.model.tokens import BOS_ID, EOS_ID, NUM_SPECIAL, PAD_ID, SPECIAL_TOKENS

# words (letters, digits, apostrophes inside words) or single punctuation marks
_WORD_RE = re.compile(r"[\w]+(?:'[\w]+)*|[^\w\s]")
# punctuation written without a space before it when decoding words back to text
_NO_SPACE_BEFORE = set(".,;:!?)]}'%")
_NO_SPACE_AFTER = set("([{")


class Tokenizer:
    """What both tokenizers share: the special ids, decoding them, and saving to JSON. Ordinary ids start after the
    ``num_special`` reserved ones (:data:`mmrope.model.tokens.NUM_SPECIAL`)."""

    kind: str
    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    num_special = NUM_SPECIAL

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")

    def _check_id(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is outside the {self.kind} tokenizer's vocabulary (size {self.vocab_size})")
        return i


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes shifted past the special ids: any text round-trips and no token is ever unknown."""

    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return self.num_special + 256

    def encode(self, text: str) -> list[int]:
        return [b + self.num_special for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        parts, run = [], bytearray()  # consecutive bytes are decoded together so multi-byte characters survive
        for i in map(self._check_id, ids):
            if i >= self.num_special:
                run.append(i - self.num_special)
                continue
            if not skip_special:
                parts.append(run.decode("utf-8", errors="replace"))
                parts.append(SPECIAL_TOKENS[i])
                run = bytearray()
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "num_special": self.num_special}

    @classmethod
    def from_dict(cls, d: dict) -> "ByteTokenizer":
        _check_num_special(d)
        return cls()

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"


class WordTokenizer(Tokenizer):
    """Lower-cased words and punctuation marks; ids after the specials and ``<unk>``, most frequent first.

    Text is normalised (lower case, one space between words), so ``decode(encode(t))`` gives back the normalised
    caption, not necessarily ``t`` itself. Words not seen in training map to ``unk_id``.
    """

    kind = "word"
    unk_token = "<unk>"

    def __init__(self, words: Iterable[str]):
        self.unk_id = self.num_special
        self.words = list(words)  # ordinary tokens, in id order
        reserved = set(SPECIAL_TOKENS) | {self.unk_token}
        bad = [w for w in self.words if w in reserved or not w]
        if bad:
            raise ValueError(f"word tokenizer vocabulary holds a reserved or empty token: {bad[0]!r}")
        if len(set(self.words)) != len(self.words):
            raise ValueError("word tokenizer vocabulary holds duplicate words")
        self.offset = self.num_special + 1  # id of words[0]
        self.word_to_id = {w: i + self.offset for i, w in enumerate(self.words)}

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD_RE.findall(text.lower())

    @classmethod
    def train(cls, captions: Iterable[str], min_freq: int = 1, max_words: int | None = None) -> "WordTokenizer":
        """Count words over the captions; keep those seen ``min_freq`` times, most frequent first (ties A-Z)."""
        counts = Counter(w for c in captions for w in cls.split(c))
        words = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
        if max_words is not None:
            words = words[:max_words]
        if not words:
            raise ValueError("cannot train a word tokenizer: the captions hold no words")
        return cls(words)

    @property
    def vocab_size(self) -> int:
        return self.offset + len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self.word_to_id.get(w, self.unk_id) for w in self.split(text)]

    def id_to_token(self, i: int) -> str:
        i = self._check_id(i)
        if i < self.num_special:
            return SPECIAL_TOKENS[i]
        return self.unk_token if i == self.unk_id else self.words[i - self.offset]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        tokens = [self.id_to_token(i) for i in ids if not (skip_special and self._check_id(i) < self.num_special)]
        text = ""
        for t in tokens:
            glue = not text or t in _NO_SPACE_BEFORE or text[-1] in _NO_SPACE_AFTER
            text += t if glue else " " + t
        return text

    def to_dict(self) -> dict:
        return {"kind": self.kind, "num_special": self.num_special, "words": self.words}

    @classmethod
    def from_dict(cls, d: dict) -> "WordTokenizer":
        words = d.get("words")
        if not words or not isinstance(words, list):
            raise ValueError("word tokenizer JSON needs a non-empty 'words' list")
        _check_num_special(d)
        return cls(d["words"])

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


def _check_num_special(d: dict) -> None:
    """A saved tokenizer reserved the ids of :mod:`mmrope.model.tokens`, or its ordinary ids are not this one's."""
    num_special = d.get("num_special", NUM_SPECIAL)
    if isinstance(num_special, bool) or num_special != NUM_SPECIAL:
        raise ValueError(f"tokenizer num_special={num_special!r}: expected {NUM_SPECIAL}, the reserved ids of "
                         "mmrope.model.tokens (build a new tokenizer)")


TOKENIZERS = {"byte": ByteTokenizer, "word": WordTokenizer}


def build_tokenizer(
    kind: Literal["byte", "word"], captions: Iterable[str] | None = None, min_freq: int = 1
) -> Tokenizer:
    """The tokenizer a config names; ``"word"`` is trained on ``captions`` (the training captions)."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "word":
        if captions is None:
            raise ValueError("tokenizer 'word' needs the training captions to build its vocabulary")
        return WordTokenizer.train(captions, min_freq=min_freq)
    raise ValueError(f"tokenizer kind must be one of {sorted(TOKENIZERS)}, got {kind!r}")


def load_tokenizer(path_or_dict: str | Path | dict) -> Tokenizer:
    """A tokenizer from its saved JSON file (or the dict ``to_dict`` gave)."""
    if isinstance(path_or_dict, dict):
        d, where = path_or_dict, "tokenizer dict"
    else:
        where = str(path_or_dict)
        try:
            d = json.loads(Path(path_or_dict).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{where}: cannot read tokenizer JSON ({e})") from None
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind not in TOKENIZERS:
        raise ValueError(f"{where}: 'kind' must be one of {sorted(TOKENIZERS)}, got {kind!r}")
    return TOKENIZERS[kind].from_dict(d)
