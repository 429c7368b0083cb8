"""The HTTP side of ``mmrope serve``: the page, the checkpoints it may offer, one upload at a time through the model.

    GET  /                    the page (index.html, app.js, style.css: package data, read once at start)
    GET  /api/info            the checkpoints under --ckpt-dir and the upload limits, as JSON
    POST /api/caption?ckpt=NAME&strategy=greedy|beam&beams=N&name=FILE
                              the file's bytes as the body -> :func:`mmrope.serve.explain.explain`'s JSON, or
                              {"error": "<file>: <reason>"} with a 4xx status

What keeps it safe to run:
- It listens on 127.0.0.1 unless --host says otherwise (a warning is printed then), and while it does, a request
  whose Host header is not a loopback name is refused, so a web page cannot reach it by DNS rebinding. An upload
  must carry ``X-Requested-With: mmrope``, a header another site's page cannot send without the browser asking
  first (a CORS preflight, which this server never grants).
- The body's size is checked from Content-Length before a byte of it is read (no length, or a chunked body, is
  refused); an image's pixel count is checked from its header before any pixel is decoded (``load_image``).
- Uploads are written under a ``tempfile.TemporaryDirectory`` the server owns, under a random name of its own (the
  client's file name is only shown, never used as a path), and removed once answered; the folder goes at exit.
  Pictures go back as ``data:`` URLs; the only files served are the page's three, by fixed names.
- A client picks a checkpoint by its name, or its index, in the list of files under --ckpt-dir; nothing else is
  accepted, and links that lead outside that folder are not listed.
- The page puts every text it receives into the document as text (``textContent``), never as HTML, and the
  server's Content-Security-Policy allows no script but its own and no connection elsewhere.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from mmrope.data.images import DEFAULT_MAX_IMAGE_PIXELS
from mmrope.inference import DEFAULT_MAX_FRAMES

MAX_UPLOAD_BYTES = 32 * 2**20  # a 50-megapixel JPEG fits; a larger body is refused before it is read
MAX_BEAMS = 8  # beyond this a CPU answers slowly and the alternatives stop differing
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass
class Settings:
    """What ``mmrope serve``'s flags fix for every request."""

    ckpt_dir: Path
    device: str = "cpu"
    max_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_frames: int = DEFAULT_MAX_FRAMES
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


class PipelineCache:
    """Loaded models by path, the most recently used few kept; a file rewritten since (``last.ckpt`` of a running
    training) is loaded again."""

    def __init__(self, device: str, keep: int = 3):
        self.device, self.keep, self.pipelines = device, keep, OrderedDict()

    def get(self, path: Path):
        from mmrope.inference import load

        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key not in self.pipelines:
            self.pipelines[key] = load(path, device=self.device)
            while len(self.pipelines) > self.keep:
                self.pipelines.popitem(last=False)
        self.pipelines.move_to_end(key)
        return self.pipelines[key]


class CaptionServer(ThreadingHTTPServer):
    """One page, one model call at a time (``lock``), uploads under ``upload_dir``."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], settings: Settings, upload_dir: Path):
        import socket

        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.settings = settings
        self.checkpoints = CheckpointFolder(settings.ckpt_dir)
        self.pipelines = PipelineCache(settings.device)
        self.upload_dir = upload_dir
        self.lock = threading.Lock()
        self.loopback_only = address[0] in LOOPBACK_NAMES
        static = files("mmrope.serve") / "static"
        self.assets = {route: (static.joinpath(name).read_bytes(), kind) for route, (name, kind) in ASSETS.items()}
        super().__init__(address, CaptionHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class CaptionHandler(BaseHTTPRequestHandler):
    server: CaptionServer
    server_version = "mmrope-serve"
    timeout = 60  # seconds a client may stall while sending its request

    def do_GET(self) -> None:
        if not self._host_allowed():
            return
        route = urlsplit(self.path).path
        if route in self.server.assets:
            body, kind = self.server.assets[route]
            self._send(HTTPStatus.OK, body, kind)
        elif route == "/api/info":
            s = self.server.settings
            self._send_json(HTTPStatus.OK, {"checkpoints": self.server.checkpoints.names(), "max_bytes": s.max_bytes,
                                            "max_pixels": s.max_pixels, "max_beams": MAX_BEAMS})
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"{route[:80]}: no such page"})

    def do_POST(self) -> None:
        if not self._host_allowed():
            return
        if urlsplit(self.path).path != "/api/caption":
            self.close_connection = True
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "uploads go to /api/caption"})
            return
        status, answer = self._caption()
        self._send_json(status, answer)

    def _caption(self) -> tuple[HTTPStatus, dict]:
        from mmrope.data.images import ImageError
        from mmrope.serve.explain import explain

        s = self.server.settings
        query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
        name = shown_name(query.get("name", ""))
        self.close_connection = True  # an answer before the whole body was read must not leave the rest queued
        if self.headers.get("X-Requested-With") != "mmrope":
            return HTTPStatus.FORBIDDEN, {"error": "an upload needs the header X-Requested-With: mmrope"}
        length = self.headers.get("Content-Length", "")
        if "Transfer-Encoding" in self.headers or not length.isdigit():
            return HTTPStatus.LENGTH_REQUIRED, {"error": f"{name}: the upload must say its size (Content-Length)"}
        if int(length) > s.max_bytes:
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {
                "error": f"{name}: {int(length)} bytes is over the upload limit of {s.max_bytes} bytes"}
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
        upload = self.server.upload_dir / f"upload-{uuid.uuid4().hex}"
        start = time.perf_counter()
        try:
            with open(upload, "xb") as f:
                copied = _copy(self.rfile, f, int(length))
            if copied < int(length):
                return HTTPStatus.BAD_REQUEST, {"error": f"{name}: the upload ended after {copied} of {length} bytes"}
            with self.server.lock:
                pipeline = self.server.pipelines.get(path)
                answer = explain(pipeline, upload, strategy=strategy, num_beams=beams, max_new_tokens=s.max_new_tokens,
                                 size=s.size, resize=s.resize, clip_mode=s.clip_mode, max_pixels=s.max_pixels,
                                 max_frames=s.max_frames)
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

    def _host_allowed(self) -> bool:
        """False (and a 421 sent) when serving loopback only and the Host header names another host."""
        hostname = urlsplit("//" + self.headers.get("Host", "")).hostname or ""
        if not self.server.loopback_only or hostname in LOOPBACK_NAMES:
            return True
        self.close_connection = True
        refusal = {"error": "this server answers to 127.0.0.1 and localhost only"}
        self._send_json(HTTPStatus.MISDIRECTED_REQUEST, refusal)
        return False

    def _send_json(self, status: HTTPStatus, answer: dict) -> None:
        self._send(status, json.dumps(answer).encode("utf-8"), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        sys.stderr.write(f"mmrope serve: {self.address_string()} {format % args}\n")


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


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8765, announce=print) -> None:
    """Serve until interrupted. ``announce(url, upload_dir)`` is called once the socket listens."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mmrope-serve-") as tmp:
        # matplotlib's colour maps create its config folder on import: keep that here too, unless one is chosen
        os.environ.setdefault("MPLCONFIGDIR", str(Path(tmp) / "matplotlib"))
        uploads = Path(tmp) / "uploads"
        uploads.mkdir()
        server = CaptionServer((host, port), settings, uploads)
        try:
            announce(server.url, uploads)
            server.serve_forever()
        finally:
            server.server_close()
