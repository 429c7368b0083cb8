"""Plug-ins from a user's own files: arms and benchmarks that live outside the package.

A plug-in is a class registered in one of the three registries, in any Python file::

    from mmrope.model.decoder_schemes import DecoderScheme, register_scheme

    @register_scheme("my_scheme")
    class MyScheme(DecoderScheme): ...

Importing the file registers it (``register_encoder`` of :mod:`mmrope.model.pos_encodings` and
``register_benchmark`` of :mod:`mmrope.benchmarks` work the same way); from then on its name is a valid config value.
A script imports its file itself. The command-line tools (``train.py`` / ``python -m mmrope.train``, the stacked
engine, ``mmrope ablate``, ``eval``, ``caption``, ``serve``, ...) import the files and modules ``MMROPE_PLUGINS``
lists, comma-separated, before they read their arguments::

    MMROPE_PLUGINS=experiments/my_arms.py python train.py fit --config my_run.yaml

An environment variable rather than an option, because it reaches every process a tool starts without each tool
passing it on: the ablation's training runs, the stacked engine, DDP's ranks.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

PLUGINS_VARIABLE = "MMROPE_PLUGINS"
_loaded: dict[str, ModuleType] = {}  # each entry is imported once per process


def load_plugins(spec: str | None = None) -> list[ModuleType]:
    """Import each file (``path/to/arms.py``) or module (``my_package.arms``) of the comma-separated ``spec``
    (default: ``$MMROPE_PLUGINS``), once per process -> the modules. A file is imported as a module named after it
    (``arms``), so that its classes pickle and a second import of it is the same module. One line, a ValueError,
    for an entry that cannot be imported."""
    spec = os.environ.get(PLUGINS_VARIABLE, "") if spec is None else spec
    modules = []
    for entry in (e.strip() for e in spec.split(",")):
        if entry and entry not in _loaded:
            _loaded[entry] = _import(entry)
        if entry:
            modules.append(_loaded[entry])
    return modules


def _import(entry: str) -> ModuleType:
    where = f"{PLUGINS_VARIABLE} entry {entry!r}"
    if entry.endswith(".py") or os.sep in entry or "/" in entry:
        path = Path(entry).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{where}: no such file")
        name = path.stem
        module = sys.modules.get(name)
        if module is not None:
            if Path(getattr(module, "__file__", "") or "").resolve() == path:
                return module
            raise ValueError(f"{where}: a module named {name!r} is already imported (from "
                             f"{getattr(module, '__file__', 'built-in')}): rename the file")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    try:
        return importlib.import_module(entry)
    except ModuleNotFoundError as err:
        if err.name and entry.startswith(err.name):  # the entry itself, not something it imports
            raise ValueError(f"{where}: no such module (a file needs its .py)") from None
        raise
