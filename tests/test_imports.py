"""The package's import graph, read from the source: no import circle, and the model imports nothing of mmrope
outside it (STYLE.md: anyone can lift ``mmrope.model`` into their own loop)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mmrope"
# plug-in registries and what they hold: not even an import deferred into a function may close a circle here
REGISTRIES = ("mmrope.model", "mmrope.benchmarks")


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports(name: str, path: Path, known: dict[str, Path], deferred: bool) -> set[str]:
    """The mmrope modules ``name`` imports when it runs (not under ``if TYPE_CHECKING:``); with ``deferred``, also
    those imported inside functions. ``from a import b`` imports ``a`` and, when it is a module, ``a.b``."""
    found = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)) and (deferred or not inner):
                if isinstance(child, ast.Import):
                    targets = [alias.name for alias in child.names]
                else:
                    assert child.level == 0, f"{name}: a relative import"
                    targets = [child.module] + [f"{child.module}.{alias.name}" for alias in child.names]
                found.update(t for t in targets if t in known and t != name)
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_round_a_circle():
    known = module_names()
    assert {"mmrope.model.decoder_schemes.base", "mmrope.model.pos_encodings.base", "mmrope.benchmarks"} <= set(known)
    assert circles({n: imports(n, p, known, deferred=False) for n, p in known.items()}) == []
    registries = {n: p for n, p in known.items() if n.startswith(REGISTRIES)}
    assert circles({n: imports(n, p, registries, deferred=True) for n, p in registries.items()}) == []


def test_the_model_imports_nothing_of_mmrope_outside_it():
    known = module_names()
    for name, path in known.items():
        if name.startswith("mmrope.model"):
            outside = {m for m in imports(name, path, known, deferred=True) if not m.startswith("mmrope.model")}
            assert not outside, f"{name} imports {outside}"


def test_an_error_is_put_on_one_line_by_one_helper():
    from mmrope.errors import one_line

    assert one_line(ValueError("a\n  b\tc")) == "a b c"
    assert one_line(KeyError()) == "KeyError" and one_line("") == ""
    assert one_line(ValueError("x" * 50), limit=10) == "xxxxxxx..." and one_line("short", limit=10) == "short"
    copy = re.compile(r"join\(str\(\w+\)\.split\(\)\)")  # " ".join(str(e).split()): the helper's body
    copies = [path.relative_to(PACKAGE.parent) for path in PACKAGE.rglob("*.py")
              if path.name != "errors.py" and copy.search(path.read_text(encoding="utf-8"))]
    assert not copies, f"{copies}: use mmrope.errors.one_line"


def test_importing_the_package_leaves_the_warning_filters_alone():
    """A user's own loop that imports mmrope keeps every warning: `mmrope train` silences Lightning's about what it
    does on purpose only while it runs (mmrope.train.cli.expected_warnings_silenced)."""
    modules = sorted(n for n in module_names() if not n.endswith(("__main__", "triton_rope")))
    code = ("import importlib, sys, warnings\nimport lightning.pytorch, torch.utils.data\n"
            "before = list(warnings.filters)\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "changed = [f for f in warnings.filters if f not in before]\n"
            "sys.exit(f'filters added at import: {changed}' if changed else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
