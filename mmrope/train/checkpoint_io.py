"""How training checkpoints are written and read: atomically, and never by unpickling code."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files that are never torn and never run code.

    Saving writes a temporary file beside the target, fsyncs it, then renames it over the target: a crash mid-save
    never leaves a torn checkpoint, and the previous one stays intact until the new one is complete. A failed save
    (a full disk) removes its temporary file and raises one ``OSError`` line naming the checkpoint; temporary files
    left by a process that was killed mid-save are removed on the next save into the folder.

    Loading always passes ``weights_only=True``: a checkpoint holds tensors and plain data, so a crafted file's
    pickled objects are refused rather than run, whatever torch's default or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any = None) -> None:
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
            raise OSError(code, f"cannot write checkpoint {path}: {_one_line(e)}") from None

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


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


def _one_line(e: BaseException) -> str:
    """An exception as one short line: a disk-full error from torch's writer spans several."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]
