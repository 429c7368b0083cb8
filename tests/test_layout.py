"""The package as its own docstrings map it: each ``__init__.py`` that lists its files (a line indented by four
spaces that starts with ``name.py`` or ``folder/``, a name followed by two spaces or more) lists every module and
sub-package beside it, and nothing that is not there (README "Files" is the map of the whole checkout); and no
module is too long to read in one sitting."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmrope"
ENTRY = re.compile(r"(?:(?<=^)|(?<=\s\s))([\w/]*\w\.py|\w+/)(?=\s{2,})")  # a name starting a column of the map


def file_map(init: Path) -> list[str] | None:
    """The names an ``__init__.py``'s docstring maps, or None when it has no map."""
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")), clean=False) or ""
    lines = [line[4:] for line in doc.splitlines() if re.match(r"    [\w/]*\w(\.py|/)\s{2,}", line)]
    return [name for line in lines for name in ENTRY.findall(line)] if lines else None


INITS = [p for p in sorted(PACKAGE.rglob("__init__.py")) if file_map(p) is not None]


def test_the_maps_are_found():
    found = {str(p.parent.relative_to(PACKAGE)) for p in INITS}
    assert {"model", "data", "train", "eval", "viz", "ablation", "benchmarks", "data/shards"} <= found


@pytest.mark.parametrize("init", INITS, ids=lambda p: str(p.parent.relative_to(PACKAGE.parent)))
def test_an_init_maps_the_files_beside_it(init):
    folder = init.parent
    mapped = file_map(init)
    for name in mapped:  # a name with a folder in front is a path from the checkout (mmrope/checkpoints.py)
        assert (PACKAGE.parent / name if "/" in name.rstrip("/") else folder / name).exists(), name
    there = {p.name for p in folder.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    there |= {f"{p.name}/" for p in folder.iterdir() if (p / "__init__.py").is_file()}
    assert there <= set(mapped), f"{init.relative_to(PACKAGE.parent)} does not map {sorted(there - set(mapped))}"


def test_no_module_is_over_400_lines():
    """A module read in one sitting: past 400 lines it holds more than one concept, and is split by them."""
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long
