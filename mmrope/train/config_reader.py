"""One way to read a run's config everywhere: training, ``mmrope eval --data``, the ablation's grids.

A run's config is what ``python -m mmrope.train`` resolves from its command line: ``--config`` files stacked in
order, ``--key=value`` overrides, the defaults of the model and data module, and the links between them (the data
module cuts images into the model's patches at the model's size). :func:`read_config` resolves exactly that, with
LightningCLI's own parser and without building anything, so no caller re-reads YAML with defaults of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path


def read_config(args: list[str]) -> dict:
    """The resolved config of a train command line without its subcommand (``["--config", "a.yaml",
    "--data.seed=1"]``) -> a plain dict with ``model``, ``data``, ``trainer`` and ``seed_everything``; one
    ``ValueError`` line when it does not parse (jsonargparse prints the details above it)."""
    from mmrope.train.cli import CaptionCLI
    from mmrope.train.datamodule import CaptionDataModule
    from mmrope.train.module import CaptionModule

    class Reader(CaptionCLI):
        def _parse_ckpt_path(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

        def _set_seed(self) -> None:
            pass

    args = check_config_files(args)
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when the process has arguments of its own
    try:
        reader = Reader(CaptionModule, CaptionDataModule, run=False, args=args, save_config_callback=None)
    except SystemExit:
        raise ValueError(f"the train config {' '.join(args)} does not parse (see the message above)") from None
    finally:
        sys.argv = argv
    return reader.config.as_dict()


def explicit_model_keys(args: list[str]) -> set[str]:
    """The ``model.`` settings a command line gives, by flag or in a ``--config`` file, as dotted keys under
    ``model`` (``vision.dim``); a whole section given at once counts as every key under it."""
    import yaml

    keys: set[str] = set()
    for i, arg in enumerate(args):
        flag, _, _ = arg.partition("=")
        if flag.startswith("--model."):
            keys.add(flag.removeprefix("--model."))
        name = _config_file_argument(args, i)
        if name is not None:
            try:
                config = yaml.safe_load(Path(name).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue  # check_config_files has said so already
            model = config.get("model") if isinstance(config, dict) else None
            if isinstance(model, dict):
                keys.update(dotted for dotted, _ in _flatten(model))
    return keys


def _config_file_argument(args: list[str], i: int) -> str | None:
    """The file ``args[i]`` names when it is ``--config=FILE``, or ``--config`` / ``-c`` followed by FILE."""
    arg = args[i]
    name = arg.split("=", 1)[1] if arg.startswith("--config=") else args[i + 1] if (
        arg in ("--config", "-c") and i + 1 < len(args)) else None
    if name is None or name.lstrip().startswith("{"):  # an inline YAML/JSON string, not a file
        return None
    return name


def _flatten(d: dict, prefix: str = ""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def check_config_files(args: list[str]) -> list[str]:
    """Read every ``--config`` file first, so a YAML mistake names its file and line (jsonargparse would say
    ``<unicode string>``) and a missing file is one line -> ``args`` with each ``configs/...`` file that is not in
    the current folder replaced by the package's copy (:func:`mmrope.resources.find_config`). Before that, import
    the plug-ins ``MMROPE_PLUGINS`` lists (:mod:`mmrope.plugins`): every train command line passes here before it
    is parsed, and the configs may name what they register."""
    import yaml

    from mmrope.plugins import load_plugins
    from mmrope.resources import find_config

    load_plugins()
    args = list(args)
    for i in range(len(args)):
        name = _config_file_argument(args, i)
        if name is None:
            continue
        path = find_config(name)
        if str(path) != name:
            args[i] = f"--config={path}" if args[i].startswith("--config=") else args[i]
            if not args[i].startswith("--config="):
                args[i + 1] = str(path)
            name = str(path)
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"--config {name}: no such file") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{name}: not UTF-8 text (byte {e.start})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            context = getattr(e, "context", None)
            raise ValueError(f"{name}{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")) from None
    return args


