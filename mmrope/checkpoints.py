"""Reading and writing model files safely: training checkpoints, exported folders, and the weights' fit.

Two formats hold a captioner. A training checkpoint (``last.ckpt``, ``best-*.ckpt``, ``step<N>.ckpt``) is a dict
with our ``"mmrope"`` entry (:func:`mmrope_entry`: the model config and the tokenizer) beside the weights
(``state_dict``, under ``model.``) and ``global_step``. An exported folder is ``config.json`` +
``model.safetensors`` + ``tokenizer.json``, readable without Lightning.

Each training engine adds its own training state to a checkpoint, and only that engine resumes it:

- ``mmrope train fit`` (Lightning): Lightning's own entries (``optimizer_states``, ``lr_schedulers``, ``loops``,
  callback states);
- ``mmrope train stacked`` (several seeds as one set of batched weights, :mod:`mmrope.train.stacked`): one
  ``"stacked"`` entry (:data:`STACKED`) holding the run's row of the engine's AdamW state (moments as flat
  tensors, step count, learning rate) and its place in the stack. It holds no Lightning loop or scheduler state,
  so Lightning cannot resume it; :func:`read_checkpoint` says so in one line and names the command that can.

Everything else reads both alike: :func:`read_checkpoint` (``mmrope.load``, ``mmrope eval``, the ablation's
scoring), ``CaptionModule.load_from_checkpoint`` and ``--ckpt_path`` for ``validate`` / ``test``. Both engines write
through :func:`save_checkpoint`: atomically (temporary file, fsync, rename), a full disk one ``OSError`` line.

Every file is read so that it can neither run code nor fail with a traceback: ``torch.load`` always gets
``weights_only=True`` (pickled objects are refused, whatever torch's default or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``),
and every way a file can be wrong (empty, torn, random bytes, crafted, another architecture, a config with a wrong
type) is one ``ValueError`` line naming the file and what is wrong. Exports are written atomically: a folder is
complete or absent, and only an empty folder or a previous export is ever replaced.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmrope.data.tokenizer import Tokenizer, load_tokenizer
from mmrope.errors import one_line
from mmrope.model.config import CaptionerConfig

EXPORT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
STACKED = "stacked"  # the entry of the stacked engine's training state
RESUMED_BY = {"lightning": "mmrope train fit ... --ckpt_path <file>", STACKED: "mmrope train stacked ... --resume"}


def load_error_reason(e: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` failing with ``e`` says about the file, in a few words."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError):
        detail = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported" in line),
                      "")
        if "GLOBAL" in detail:
            return (f"it holds pickled Python objects, which loading would run as code ({detail.rstrip('.')}); "
                    "refused: a checkpoint holds tensors and plain data only")
        return f"not a PyTorch checkpoint ({detail or one_line(e, 120)})"
    if isinstance(e, EOFError):
        return "empty or cut short"
    if "central directory" in text or "zip archive" in text:
        return "torn or truncated (its zip archive is incomplete)"
    return one_line(e, 200)


def load_torch_file(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load`` that never runs code and fails with one line naming ``path``. ``mmap=True`` maps the tensors
    instead of reading them: what reading one entry of a large checkpoint costs."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, not a checkpoint")
    try:
        return torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except Exception as e:  # noqa: BLE001 - a torn zip, a text file, a crafted pickle: each raises its own
        raise ValueError(f"{path}: cannot be read as a PyTorch checkpoint: {load_error_reason(e)}") from None


def mmrope_entry(config: CaptionerConfig, tokenizer: Tokenizer | None) -> dict:
    """What inference needs from a training checkpoint, whichever engine wrote it: ``checkpoint["mmrope"]``."""
    from mmrope import __version__

    return {"version": __version__, "config": config.to_dict(), "tokenizer": tokenizer.to_dict() if tokenizer else None}


def checkpoint_engine(checkpoint: dict) -> str:
    """Which engine's training state a checkpoint holds: ``"stacked"`` or ``"lightning"``."""
    return STACKED if isinstance(checkpoint.get(STACKED), dict) else "lightning"


def read_checkpoint(path: str | Path, training_state: bool = False, engine: str = "lightning",
                    ) -> tuple[CaptionerConfig, Tokenizer, dict[str, torch.Tensor], dict]:
    """Config, tokenizer and model weights (``model.`` prefix removed) of a training checkpoint, and the whole
    checkpoint dict. ``training_state=True`` also requires what ``engine`` resumes from (``"lightning"``: the
    optimizer and loops; ``"stacked"``: its own entry), and names the command that resumes a file the other engine
    wrote."""
    path = Path(path)
    checkpoint = load_torch_file(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("mmrope"), dict):
        raise ValueError(f"{path}: no 'mmrope' entry: not a checkpoint written by mmrope train")
    meta = checkpoint["mmrope"]
    config = config_from_dict(meta.get("config"), path)
    if meta.get("tokenizer") is None:
        raise ValueError(f"{path}: the checkpoint holds no tokenizer")
    tokenizer = _tokenizer(meta["tokenizer"], path)
    weights = checkpoint.get("state_dict")
    weights = weights if isinstance(weights, dict) else {}
    state = {k.removeprefix("model."): v for k, v in weights.items()
             if isinstance(k, str) and k.startswith("model.") and isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{path}: no model weights (expected 'state_dict' entries starting with 'model.')")
    if training_state:
        _check_training_state(checkpoint, engine, path)
    _check_vocab(config, tokenizer, path)
    return config, tokenizer, state, checkpoint


def _check_training_state(checkpoint: dict, engine: str, path: Path) -> None:
    written_by = checkpoint_engine(checkpoint)
    if written_by != engine:
        raise ValueError(f"{path}: holds no training state {engine_name(engine)} can resume: it was written by "
                         f"{engine_name(written_by)}, which resumes it ({RESUMED_BY[written_by]}); evaluate it with "
                         "`mmrope eval`, or start a new run")
    needed = ("optimizer_states", "loops", "global_step") if engine == "lightning" else (STACKED, "global_step")
    missing = [k for k in needed if k not in checkpoint]
    if missing:
        raise ValueError(f"{path}: holds no training state ({missing[0]} is missing), so training cannot resume "
                         "from it; evaluate it with `mmrope eval`, or start a new run")


def engine_name(engine: str) -> str:
    return "the stacked engine (mmrope train stacked)" if engine == STACKED else "Lightning (mmrope train fit)"


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    """Write ``checkpoint`` to ``path`` so that it is never torn: a temporary file beside it, fsynced, then renamed
    over it, so a crash mid-save leaves the previous file whole. A failed save (a full disk) removes its temporary
    file and raises one ``OSError`` line naming the checkpoint; temporary files left by a process killed mid-save
    are removed on the next save into the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = path.with_name(f".saving-{os.getpid()}.tmp")  # no "last" in the name: Lightning globs for it
    try:
        with open(tmp, "wb") as f:
            writer = _KeepWriteError(f)
            try:
                torch.save(checkpoint, writer)
            except RuntimeError:
                if writer.error is not None:  # the reason torch's "file write failed" leaves out
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - whatever torch's writer raises, the target stays whole
        tmp.unlink(missing_ok=True)
        code = e.errno if isinstance(e, OSError) and e.errno else errno.EIO
        reason = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e, 300)
        raise OSError(code, f"cannot write checkpoint {path}: {reason}") from None


class _KeepWriteError:
    """The file ``torch.save`` writes through, keeping the ``OSError`` a write raised: torch turns it into
    ``[enforce fail at inline_container.cc:672] ... file write failed``, which does not say the disk is full."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def remove_stale_temporaries(folder: Path) -> None:
    """Delete ``.saving-<pid>.tmp`` files whose process is gone (it was killed while saving)."""
    for tmp in folder.glob(".saving-*.tmp"):
        pid = tmp.name.removeprefix(".saving-").removesuffix(".tmp")
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_exported(directory: str | Path) -> tuple[CaptionerConfig, Tokenizer, dict[str, torch.Tensor]]:
    """Config, tokenizer and weights of a folder written by :func:`write_exported`."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in EXPORT_FILES:
        if not (directory / name).is_file():
            raise ValueError(f"{directory / name}: missing; an exported model folder holds {', '.join(EXPORT_FILES)}")
    config_path = directory / "config.json"
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{config_path}: cannot read the model config ({one_line(e, 200)})") from None
    config = config_from_dict(raw, config_path)
    tokenizer = load_tokenizer(directory / "tokenizer.json")
    weights = directory / "model.safetensors"
    try:
        state = load_file(weights)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{weights}: cannot be read as safetensors ({one_line(e, 200)})") from None
    _check_vocab(config, tokenizer, directory)
    return config, tokenizer, state


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number a config may hold")


def write_exported(directory: str | Path, config: CaptionerConfig, model: nn.Module, tokenizer: Tokenizer) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``tokenizer.json`` to ``directory``, atomically.

    The files go to a temporary folder beside ``directory``, which then replaces it in one rename: a full disk or a
    kill leaves the previous export (or nothing) in place, never a half-written folder. Only a missing or empty
    folder, or a previous export (:func:`is_export`), is replaced; a folder holding anything else is refused before
    anything is written. ``save_model`` stores the tied head / embedding once (``save_file`` refuses shared
    tensors); :func:`load_weights` re-ties them.
    """
    from safetensors.torch import save_model

    from mmrope import __version__

    directory = export_target(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.exporting-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.replaced-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True) + "\n",
                                         encoding="utf-8")
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt", "mmrope_version": __version__})
        tokenizer.save(tmp / "tokenizer.json")
        for name in EXPORT_FILES:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
    except Exception as e:  # noqa: BLE001 - a full disk raises OSError from Python, others from safetensors
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not directory.exists():
            os.replace(old, directory)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e, 200)
        raise OSError(f"cannot write the export {directory}: {reason}") from None
    shutil.rmtree(old, ignore_errors=True)
    return directory


def export_target(directory: str | Path) -> Path:
    """The folder an export to ``directory`` replaces (a link's target), after refusing one that is neither missing,
    empty nor a previous export: ``--out runs/x`` must not take a run's checkpoints and logs with it."""
    directory = Path(directory)
    if directory.is_symlink():  # replace what the link leads to, and keep the link
        directory = Path(os.path.realpath(directory))
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory}: exists and is not a folder")
    if directory.is_dir():
        held = sorted(p.name for p in directory.iterdir())
        if held and not is_export(directory):
            shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            raise ValueError(f"{directory}: holds {shown}, not an mmrope export: refusing to replace it; give a new "
                             "or empty folder")
    return directory


def is_export(directory: Path) -> bool:
    """True for a folder :func:`write_exported` wrote: exactly its three files, the weights marked as mmrope's
    (every export's ``model.safetensors`` carries ``mmrope_version`` in its metadata)."""
    from safetensors import safe_open

    if sorted(p.name for p in directory.iterdir()) != sorted(EXPORT_FILES):
        return False
    if any(not (directory / name).is_file() or (directory / name).is_symlink() for name in EXPORT_FILES):
        return False
    try:
        with safe_open(directory / "model.safetensors", framework="pt") as weights:
            return "mmrope_version" in (weights.metadata() or {})
    except Exception:  # noqa: BLE001 - a file that is not safetensors is not our export
        return False


def config_from_dict(d: Any, where: str | Path) -> CaptionerConfig:
    try:
        return CaptionerConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: bad model config: {one_line(e, 200)}") from None


def _tokenizer(d: Any, where: Path) -> Tokenizer:
    try:
        return load_tokenizer(d)
    except ValueError as e:
        raise ValueError(f"{where}: bad tokenizer: {one_line(e, 200)}") from None


def _check_vocab(config: CaptionerConfig, tokenizer: Tokenizer, where: Path) -> None:
    if config.text.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the config says "
                         f"text.vocab_size={config.text.vocab_size}")


def check_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str | Path) -> None:
    """Refuse ``state`` unless it is ``model``'s architecture: the same names and shapes, one line naming the
    first tensor that does not fit. A name tied to another (the output head shares the embedding) may be absent when
    its twin is there, as safetensors stores shared tensors once."""
    expected = model.state_dict()
    twins: dict[tuple, list[str]] = {}  # names that share storage in the model
    for name, tensor in expected.items():
        twins.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(name)
    tied = {name: names for names in twins.values() if len(names) > 1 for name in names}
    missing = [k for k in expected if k not in state and not any(t in state for t in tied.get(k, ()))]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{label} {names[0]}" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")
                 for label, names in (("missing", missing), ("unexpected", unexpected)) if names]
        raise ValueError(f"{where}: the weights do not fit the config (another architecture?): {'; '.join(parts)}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"{where}: {name} has shape {tuple(tensor.shape)}, the config expects "
                             f"{tuple(expected[name].shape)}")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str | Path) -> None:
    """Copy ``state`` into ``model`` after :func:`check_weights`."""
    check_weights(model, state, where)
    model.load_state_dict(state, strict=False)  # strict would count a tied twin stored once as missing
