"""``mmrope serve``'s caption page: the checkpoints it may offer, one upload at a time through the model
(:mod:`mmrope.serve.local_server` holds what keeps it safe to run, shared with the ablation page of
:mod:`mmrope.serve.ablation_server`), and :func:`serve`, which runs either.

The caption page:

    GET  /                    the page (index.html, common.js, app.js, style.css: package data, read once at start)
    GET  /api/info            the checkpoints under --ckpt-dir and the upload limits, as JSON
    POST /api/caption?ckpt=NAME&strategy=greedy|beam&beams=N&name=FILE
                              the file's bytes as the body -> :func:`mmrope.serve.explain.explain`'s JSON, or
                              {"error": "<file>: <reason>"} with a 4xx status
"""

from __future__ import annotations

import re
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS
from mmrope.data.videos import DEFAULT_MAX_CLIP_FRAMES, DEFAULT_MAX_CLIP_PIXELS
from mmrope.inference import DEFAULT_MAX_FRAMES
from mmrope.serve.ablation_server import AblationServer, AblationSettings
from mmrope.serve.local_server import MAX_QUEUED, LocalServer, PageHandler, PipelineCache

MAX_UPLOAD_BYTES = 32 * 2**20  # a 50-megapixel JPEG fits; a larger body is refused before it is read
MAX_BEAMS = 8  # beyond this a CPU answers slowly and the alternatives stop differing
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/common.js": ("common.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}


@dataclass
class Settings:
    """What ``mmrope serve``'s flags fix for every request."""

    ckpt_dir: Path
    device: str = "cpu"
    max_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_frames: int = DEFAULT_MAX_FRAMES
    max_clip_pixels: int = DEFAULT_MAX_CLIP_PIXELS
    max_clip_frames: int = DEFAULT_MAX_CLIP_FRAMES
    max_queued: int = MAX_QUEUED
    max_new_tokens: int = 32
    size: int | None = None
    resize: str = "fixed"
    clip_mode: str = "block"


class CheckpointFolder:
    """The checkpoints a client may choose: the ``.ckpt`` files and exported folders (``config.json`` beside
    ``model.safetensors``) under one folder, found afresh at each look (a training run adds some)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"--ckpt-dir {root}: no such folder")

    def names(self) -> list[str]:
        """Paths relative to the folder, '/'-separated, sorted; hidden files and links leading outside left out."""
        found = [p for p in self.root.rglob("*.ckpt") if p.is_file()]
        found += [p.parent for p in self.root.rglob("config.json") if (p.parent / "model.safetensors").is_file()]
        names = set()
        for path in found:
            relative = path.relative_to(self.root)
            if any(part.startswith(".") for part in relative.parts):  # .saving-* of an atomic write, .git, ...
                continue
            if path.resolve().is_relative_to(self.root):
                names.add(relative.as_posix())
        return sorted(names)

    def resolve(self, choice: str) -> tuple[str, Path]:
        """A name from :meth:`names`, or its index there -> (name, path). Anything else is a ``ValueError``."""
        names = self.names()
        name = names[int(choice)] if choice.isdigit() and int(choice) < len(names) else choice
        if name not in names:
            raise ValueError(f"checkpoint {choice[:80]!r} is not one of the {len(names)} offered")
        return name, self.root / name


class CaptionServer(LocalServer):
    """One page, one model call at a time (``lock``), at most ``max_queued`` more waiting (``slots``), uploads under
    ``upload_dir``."""

    def __init__(self, address: tuple[str, int], settings: Settings, upload_dir: Path):
        self.settings = settings
        self.checkpoints = CheckpointFolder(settings.ckpt_dir)
        self.pipelines = PipelineCache(settings.device)
        self.upload_dir = upload_dir
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(settings.max_queued + 1)  # the one captioned and those waiting
        super().__init__(address, CaptionHandler, ASSETS)


class CaptionHandler(PageHandler):
    server: CaptionServer

    def do_GET(self) -> None:
        if not self._host_allowed():
            return
        route = urlsplit(self.path).path
        if route == "/api/info":
            s = self.server.settings
            self._send_json(HTTPStatus.OK, {"checkpoints": self.server.checkpoints.names(), "max_bytes": s.max_bytes,
                                            "max_pixels": s.max_pixels, "max_beams": MAX_BEAMS})
        elif not self._send_asset(route):
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"{route[:80]}: no such page"})

    def do_POST(self) -> None:
        if not self._host_allowed():
            return
        if urlsplit(self.path).path != "/api/caption":
            self.close_connection = True
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "uploads go to /api/caption"})
            return
        status, answer = self._caption()
        if status is not None:
            self._send_json(status, answer)

    def _caption(self) -> tuple[HTTPStatus | None, dict]:
        """-> the answer's status and JSON, or (None, {}) when the client went away and no answer can reach it."""
        s = self.server.settings
        query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
        name = shown_name(query.get("name", ""))
        self.close_connection = True  # an answer before the whole body was read must not leave the rest queued
        if self.headers.get("X-Requested-With") != "mmrope":
            return HTTPStatus.FORBIDDEN, {"error": "an upload needs the header X-Requested-With: mmrope"}
        length = self.headers.get("Content-Length", "").strip()
        # ASCII digits only ("²".isdigit() is True, and int() refuses it); past 15 digits, surely over the limit
        if "Transfer-Encoding" in self.headers or not re.fullmatch(r"[0-9]+", length):
            return HTTPStatus.LENGTH_REQUIRED, {"error": f"{name}: the upload must say its size (Content-Length)"}
        digits = length.lstrip("0") or "0"
        if len(digits) > 15 or int(digits) > s.max_bytes:
            size = f"{digits} bytes" if len(digits) <= 15 else f"a {len(digits)}-digit number of bytes"
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {
                "error": f"{name}: {size} is over the upload limit of {s.max_bytes} bytes"}
        try:
            strategy, beams = query.get("strategy", "greedy"), int(query.get("beams", "4"))
            if strategy not in ("greedy", "beam") or not 1 <= beams <= MAX_BEAMS:
                raise ValueError
        except ValueError:
            return HTTPStatus.BAD_REQUEST, {"error": f"strategy must be greedy or beam and beams 1 to {MAX_BEAMS}"}
        try:
            checkpoint, path = self.server.checkpoints.resolve(query.get("ckpt", ""))
        except ValueError as e:
            return HTTPStatus.BAD_REQUEST, {"error": str(e)}
        if not self.server.slots.acquire(blocking=False):
            return HTTPStatus.SERVICE_UNAVAILABLE, {
                "error": f"{name}: the server is busy ({s.max_queued} uploads are waiting for the model); try again "
                         "in a moment"}
        try:
            return self._caption_upload(name, int(digits), strategy, beams, checkpoint, path)
        finally:
            self.server.slots.release()

    def _caption_upload(self, name: str, length: int, strategy: str, beams: int, checkpoint: str, path: Path,
                        ) -> tuple[HTTPStatus | None, dict]:
        from mmrope.data.images import ImageError
        from mmrope.serve.explain import explain

        s = self.server.settings
        upload = self.server.upload_dir / f"upload-{uuid.uuid4().hex}"
        start = time.perf_counter()
        try:
            with open(upload, "xb") as f:
                copied = _copy(self.rfile, f, length)
            if copied < length:
                return HTTPStatus.BAD_REQUEST, {"error": f"{name}: the upload ended after {copied} of {length} bytes"}
            with self.server.lock:
                pipeline = self.server.pipelines.get(path)
                answer = explain(pipeline, upload, strategy=strategy, num_beams=beams, max_new_tokens=s.max_new_tokens,
                                 size=s.size, resize=s.resize, clip_mode=s.clip_mode, max_pixels=s.max_pixels,
                                 max_frames=s.max_frames, max_clip_pixels=s.max_clip_pixels,
                                 max_clip_frames=s.max_clip_frames)
        except (ConnectionError, TimeoutError) as e:  # the client went away, or stalled, while sending its file
            self.log_message("%s: upload abandoned (%s)", name, type(e).__name__)
            return None, {}
        except ImageError as e:  # the one line mmrope caption prints, naming the file as the user knows it
            return HTTPStatus.BAD_REQUEST, {"error": f"{name}: {e.reason}" if e.reason else name}
        except ValueError as e:  # a checkpoint that cannot be read, a size that does not fit the model
            message = str(e).replace(str(upload), name).replace(str(path), checkpoint)
            return HTTPStatus.BAD_REQUEST, {"error": message}
        except Exception as e:  # noqa: BLE001 - the server stays up; the traceback goes to its terminal
            traceback.print_exc()
            return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{name}: internal error ({type(e).__name__})"}
        finally:
            upload.unlink(missing_ok=True)
        return HTTPStatus.OK, {"name": name, "checkpoint": checkpoint,
                               "seconds": round(time.perf_counter() - start, 2), **answer}


def shown_name(name: str) -> str:
    """The client's file name as the page shows it: its last part, printable, at most 100 characters."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", name.replace("\\", "/").rsplit("/", 1)[-1])[:100]
    return name or "upload"


def _copy(source, target, length: int, chunk: int = 2**20) -> int:
    """Copy ``length`` bytes (fewer when the client stops) -> the count copied."""
    copied = 0
    while copied < length:
        block = source.read(min(chunk, length - copied))
        if not block:
            break
        target.write(block)
        copied += len(block)
    return copied


def serve(settings: Settings | AblationSettings, host: str = "127.0.0.1", port: int = 8765,
          announce=lambda server: print(server.url, flush=True)) -> None:
    """Serve the caption page (:class:`Settings`) or an ablation's (:class:`AblationSettings`) until interrupted.
    ``announce(server)`` is called once the socket listens (its ``url``, ``loopback_only`` and, for the caption
    page, ``upload_dir``). A port or address that cannot be listened on is one ``OSError`` line."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mmrope-serve-") as tmp:
        # matplotlib's colour maps create its config folder on import: keep that here too, unless one is chosen
        os.environ.setdefault("MPLCONFIGDIR", str(Path(tmp) / "matplotlib"))
        try:
            if isinstance(settings, AblationSettings):
                server = AblationServer((host, port), settings)
            else:
                uploads = Path(tmp) / "uploads"
                uploads.mkdir()
                server = CaptionServer((host, port), settings, uploads)
        except (OSError, OverflowError) as e:  # in use, not this machine's, no such name; a port over 65535
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise OSError(f"cannot listen on {host} port {port}: {reason}") from None
        try:
            announce(server)
            server.serve_forever()
        finally:
            server.server_close()
