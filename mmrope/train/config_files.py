"""Config files as the training command reads them: each ``--config`` YAML read safely first, so a mistake in it is
one line naming the file (and the line), and jsonargparse's parse errors reworded into one line naming the key and
the file or flag that set it. The command's own parser, which resolves the files into a run's config, is
:mod:`mmrope.train.cli` (:func:`mmrope.train.config_reader.read_config` without running anything)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

MAX_YAML_VALUES = 10_000  # a config file holds a few hundred; nested aliases can make billions (a "billion laughs")


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
                keys.update(dotted for dotted, _ in flatten_keys(model))
    return keys


def config_error(message: str, args: list[str], keys: set[str]) -> str:
    """jsonargparse's parse error -> one line naming the key, the file or flag that set it, and what was expected.

    ``keys`` are the dotted keys the subcommand takes (for an unknown key: the names it may have meant)."""
    text = " ".join(message.split())
    linked = re.search(r"Call to compute_fn of link '\w+\(([\w.]+)\) --> [\w.]+' with args \(.*?\) failed: "
                       r"\w+=.*? is unknown: (expected one of .*)", text)
    if linked:  # a registry name checked by a link (the scheme decides data.row_breaks): the key that set it
        return f"{_where_set(linked.group(1), args)}: {linked.group(2)}"
    found = re.search(r'Parser key "([^"]+)": (.*)|does not accept option \'([^\']+)\''
                      r"|unrecognized arguments: --([^\s=]+)", text)
    if found is None:
        return text
    key = found.group(1) or found.group(3) or found.group(4)
    label = _where_set(key, args)
    if found.group(1):  # a value of the wrong type or not among the choices
        detail = re.sub(r"Expected a typing\.Literal\[(.*?)\]", r"expected one of \1", found.group(2))
        detail = re.sub(r"Expected a <class '(\w+)'>", r"expected a value of type \1", detail)
        detail = re.sub(r"\. Got value: (.*)$", r", got \1", detail)
        return f"{label}: {detail[0].lower()}{detail[1:]}"
    return f"{label}: unknown key{_expected_keys(key, keys)}"


def _where_set(key: str, args: list[str]) -> str:
    """``key`` labelled with the last argument that sets it (later ones win): ``<file>: key``, ``--key``, or
    ``--section: key`` for a flag that sets a whole section."""
    import yaml

    label = key
    for i, arg in enumerate(args):
        flag = arg.partition("=")[0]
        if flag.startswith("--") and _covers(flag[2:], key):
            label = flag if flag[2:] == key else f"{flag}: {key}"
        name = _config_file_argument(args, i)
        if name is not None:
            try:
                config = yaml.safe_load(Path(name).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            if isinstance(config, dict) and any(_covers(dotted, key) for dotted, _ in flatten_keys(config)):
                label = f"{name}: {key}"
    return label


def _covers(given: str, key: str) -> bool:
    return given == key or given.startswith(key + ".") or key.startswith(given + ".")


def _expected_keys(key: str, keys: set[str]) -> str:
    """What an unknown key may have meant: a close name at the first level that does not exist, or the names
    taken there."""
    parts = key.split(".")
    for n in range(len(parts)):
        parent = ".".join(parts[:n])
        names = sorted({k[len(parent) + 1 if parent else 0:].split(".")[0] for k in keys
                        if not parent or k.startswith(parent + ".")})
        if parts[n] not in names:
            close = difflib.get_close_matches(parts[n], names, n=1)
            inside = f" in {parent}" if parent else ""
            if close:
                return f" (did you mean {'.'.join([*parts[:n], close[0]])}?)"
            return f" (expected one of {', '.join(names)}{inside})" if names else ""
    return ""


def _config_file_argument(args: list[str], i: int) -> str | None:
    """The file ``args[i]`` names when it is ``--config=FILE``, or ``--config`` / ``-c`` followed by FILE."""
    arg = args[i]
    name = arg.split("=", 1)[1] if arg.startswith("--config=") else args[i + 1] if (
        arg in ("--config", "-c") and i + 1 < len(args)) else None
    if name is None or name.lstrip().startswith("{"):  # an inline YAML/JSON string, not a file
        return None
    return name


def flatten_keys(d: dict, prefix: str = ""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from flatten_keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def check_config_files(args: list[str]) -> list[str]:
    """Read every ``--config`` file first, so a YAML mistake names its file and line (jsonargparse would say
    ``<unicode string>``), a missing file, a file that is not a mapping of keys, or one whose aliases expand past
    ``MAX_YAML_VALUES`` values is one line -> ``args`` with each ``configs/...`` file that is not in the current
    folder replaced by the package's copy (:func:`mmrope.resources.find_config`). Before that, import the plug-ins
    ``MMROPE_PLUGINS`` lists (:mod:`mmrope.plugins`): every train command line passes here before it is parsed,
    and the configs may name what they register."""
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
        config = read_yaml(path, name)
        if config is not None and not isinstance(config, dict):
            raise ValueError(f"{name}: expected a mapping of keys (model:, data:, trainer:, ...), found a "
                             f"{'list' if isinstance(config, list) else type(config).__name__}")
    return args


def read_yaml(path: Path, name: str):
    """A YAML file's content, read safely -> one ``ValueError`` line naming the file for a missing file, text that
    is not UTF-8, invalid YAML, or aliases that expand past ``MAX_YAML_VALUES`` values.

    ``yaml.safe_load`` keeps an alias as a reference to its anchor, but anything that walks the result (jsonargparse
    copies and prints it) expands it: 413 bytes of nested anchors took 54 s and 3.5 GB, and printed 464 MB."""
    import yaml

    try:
        loader = yaml.SafeLoader(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--config {name}: no such file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not UTF-8 text (byte {e.start})") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, set()) > MAX_YAML_VALUES:
            raise ValueError(f"{name}: more than {MAX_YAML_VALUES} values once its aliases are expanded (nested "
                             "anchors?): refused")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        raise ValueError(f"{name}{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")) from None
    except RecursionError:
        raise ValueError(f"{name}: nested too deeply, or an alias inside its own anchor") from None
    finally:
        loader.dispose()


def _expanded_size(node, sizes: dict[int, int], open_: set[int]) -> int:
    """The values ``node`` holds with every alias expanded: an alias is the anchored node itself, met again, so
    each node's size is counted once and reused. A node inside its own anchor would expand forever."""
    import yaml

    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise RecursionError
    open_.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_) for k, v in node.value)
    else:
        size = 1
    open_.discard(id(node))
    sizes[id(node)] = size
    return size
