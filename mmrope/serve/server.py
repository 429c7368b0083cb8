"""The HTTP side of ``mmrope serve``: the caption page, the checkpoints it may offer, one upload at a time through the
model; and ``mmrope serve --ablation OUT``'s page, which only reads one ablation folder.

The caption page:

    GET  /                    the page (index.html, app.js, style.css: package data, read once at start)
    GET  /api/info            the checkpoints under --ckpt-dir and the upload limits, as JSON
    POST /api/caption?ckpt=NAME&strategy=greedy|beam&beams=N&name=FILE
                              the file's bytes as the body -> :func:`mmrope.serve.explain.explain`'s JSON, or
                              {"error": "<file>: <reason>"} with a 4xx status

The ablation page (:mod:`mmrope.serve.ablation` answers; every name is checked against the grid's plan):

    GET  /                    the page (ablation.html, ablation.js, style.css, ablation.css)
    GET  /api/summary         the plan, the runs scored and trained, metrics, curve series, the stated tests
    GET  /api/table?metric=M  every arm x point cell of M: mean and 95% interval
    GET  /api/curves?series=S S (val/place, train/loss, ...) against steps, per run and per arm
    GET  /api/scenes?split=&protocol=&factor=&frames=&seed=&show=all|disagree|wrong:ARM|right:ARM
                              each scene's reference and every arm's caption and score
    GET  /api/image?split=&protocol=&factor=&frames=&index=
                              one scene as the runs were scored on it, a PNG
    GET  /api/inspect?a=ARM&b=ARM&seed=&split=&index=&protocol=&factor=&frames=
                              the scene through both arms' last.ckpt, at the training size and at the point given

What keeps it safe to run:
- It listens on 127.0.0.1 unless --host says otherwise. While the address it listens on is a loopback one
  (127.0.0.0/8, ::1), a request whose Host header names neither a loopback address, ``localhost`` nor the --host
  given is refused, so a web page cannot reach it by DNS rebinding; on any other address (a warning is printed
  then) every Host is answered. An upload must carry ``X-Requested-With: mmrope``, a header another site's page
  cannot send without the browser asking first (a CORS preflight, which this server never grants).
- The body's size is checked from Content-Length before a byte of it is read (no length, or a chunked body, is
  refused); an image's pixel count is checked from its header before any pixel is decoded (``load_image``), and a
  clip's frame count and pixels to decode before any frame is (``load_clip``).
- One upload is captioned at a time and at most ``max_queued`` wait for the model; more are answered 503 at once,
  before their body is read, so a burst of uploads cannot queue up work without limit.
- A request the server cannot parse, or a client that goes away, costs one line on its terminal, never a
  traceback; what a client sent is logged with its control characters escaped, so it cannot drive the terminal.
- Uploads are written under a ``tempfile.TemporaryDirectory`` the server owns, under a random name of its own (the
  client's file name is only shown, never used as a path), and removed once answered; the folder goes at exit.
  Pictures go back as ``data:`` URLs; the only files served are the page's three, by fixed names.
- A client picks a checkpoint by its name, or its index, in the list of files under --ckpt-dir; nothing else is
  accepted, and links that lead outside that folder are not listed.
- The page puts every text it receives into the document as text (``textContent``), never as HTML, and the
  server's Content-Security-Policy allows no script but its own and no connection elsewhere.
- The ablation page takes no upload and no body (a request with one is refused unread, the connection closed), a
  request target of at most 2,048 characters and 16 query fields. A client names arms, seeds, splits, points,
  scenes, metrics and series, never a path: each is checked against the plan, and the files read are the runs' own
  under OUT, each resolved first (one a link leads outside OUT is refused, 403). Its model calls (the inspector)
  share the caption page's rules: one at a time, ``max_queued`` waiting, 503 beyond.
"""

from __future__ import annotations

import ipaddress
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
from mmrope.data.videos import DEFAULT_MAX_CLIP_FRAMES, DEFAULT_MAX_CLIP_PIXELS
from mmrope.errors import one_line
from mmrope.inference import DEFAULT_MAX_FRAMES
from mmrope.serve.ablation import AblationFolder, NotThere, OutsideFolder

MAX_UPLOAD_BYTES = 32 * 2**20  # a 50-megapixel JPEG fits; a larger body is refused before it is read
MAX_BEAMS = 8  # beyond this a CPU answers slowly and the alternatives stop differing
MAX_QUEUED = 4  # uploads waiting for the model; a few people sharing a page, not a crowd
# http.server's own log_message escapes these (Python >= 3.12 and recent 3.11): a request line cannot drive the
# terminal it is logged to
ESCAPED = str.maketrans({**{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}, ord("\\"): "\\\\"})
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
ABLATION_ASSETS = {"/": ("ablation.html", "text/html; charset=utf-8"),
                   "/ablation.js": ("ablation.js", "text/javascript; charset=utf-8"),
                   "/style.css": ("style.css", "text/css; charset=utf-8"),
                   "/ablation.css": ("ablation.css", "text/css; charset=utf-8")}
MAX_REQUEST_TARGET = 2048  # characters of path and query: the ablation page's longest is a few hundred
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
    max_clip_pixels: int = DEFAULT_MAX_CLIP_PIXELS
    max_clip_frames: int = DEFAULT_MAX_CLIP_FRAMES
    max_queued: int = MAX_QUEUED
    max_new_tokens: int = 32
    size: int | None = None
    resize: str = "fixed"
    clip_mode: str = "block"


@dataclass
class AblationSettings:
    """What ``mmrope serve --ablation``'s flags fix: the folder, its plan read (:mod:`mmrope.serve.ablation`)."""

    folder: AblationFolder
    max_queued: int = MAX_QUEUED


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


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and for an address of this machine only: 127.0.0.0/8, ::1 (also IPv4-mapped)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


class LocalServer(ThreadingHTTPServer):
    """What both pages' servers share: their static files (package data, read once at start), the Host check that
    keeps a loopback server out of reach of DNS rebinding, and one line per failed request."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, assets: dict[str, tuple[str, str]]):
        import socket

        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        static = files("mmrope.serve") / "static"
        self.assets = {route: (static.joinpath(name).read_bytes(), kind) for route, (name, kind) in assets.items()}
        super().__init__(address, handler)
        # decided by the address bound, not the name given: --host 127.0.0.2 or a name for 127.0.1.1 is loopback
        self.loopback_only = is_loopback(self.server_address[0])
        self.host_names = {"localhost", address[0].lower().strip("[]")}  # and any loopback address

    def allows_host(self, header: str) -> bool:
        """Whether a request with this Host header is answered (always, unless listening on loopback only)."""
        if not self.loopback_only:
            return True
        try:
            name = urlsplit("//" + header).hostname or ""
        except ValueError:  # "[", an unclosed IPv6 bracket, ...
            return False
        return name in self.host_names or is_loopback(name)

    def handle_error(self, request, client_address) -> None:
        """One line for a request that failed outside the handler's own answers, never socketserver's traceback."""
        error = sys.exc_info()[1]
        what = "went away" if isinstance(error, ConnectionError | TimeoutError) else "failed"
        sys.stderr.write(f"mmrope serve: {client_address[0]} {what} ({type(error).__name__}: "
                         f"{str(error).translate(ESCAPED)[:200]})\n")

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


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


class PageHandler(BaseHTTPRequestHandler):
    """What both pages' handlers share: the Host check, the page's files, JSON answers with the page's security
    headers, and a log that escapes what clients send."""

    server: LocalServer
    server_version = "mmrope-serve"
    timeout = 60  # seconds a client may stall while sending its request

    def _send_asset(self, route: str) -> bool:
        """Send one of the page's files when ``route`` names one -> whether it did."""
        if route not in self.server.assets:
            return False
        body, kind = self.server.assets[route]
        self._send(HTTPStatus.OK, body, kind)
        return True

    def _host_allowed(self) -> bool:
        """False (and a 421 sent) when serving loopback only and the Host header names another host."""
        if self.server.allows_host(self.headers.get("Host", "")):
            return True
        self.close_connection = True
        refusal = {"error": "this server answers to loopback addresses (127.0.0.1, ::1) and localhost only"}
        self._send_json(HTTPStatus.MISDIRECTED_REQUEST, refusal)
        return False

    def _send_json(self, status: HTTPStatus, answer: dict) -> None:
        self._send(status, json.dumps(answer).encode("utf-8"), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, kind: str) -> None:
        self.send_response(status)
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            self.send_header("Retry-After", "5")
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        sys.stderr.write(f"mmrope serve: {self.address_string()} {(format % args).translate(ESCAPED)}\n")


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

class AblationServer(LocalServer):
    """The ablation page: one folder, read only; one model call at a time (``lock``, the inspector), at most
    ``max_queued`` more waiting (``slots``)."""

    def __init__(self, address: tuple[str, int], settings: AblationSettings):
        self.settings, self.folder = settings, settings.folder
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(settings.max_queued + 1)
        super().__init__(address, AblationHandler, ABLATION_ASSETS)


class AblationHandler(PageHandler):
    """GET only, and no body: every question is a few names in the query, each checked against the plan by
    :class:`~mmrope.serve.ablation.AblationFolder` before a file is read."""

    server: AblationServer

    def do_GET(self) -> None:
        if not self._host_allowed():
            return
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # the body is not read, so the connection cannot carry another request
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "a request to this page carries no body"})
            return
        if len(self.path) > MAX_REQUEST_TARGET:
            self._send_json(HTTPStatus.REQUEST_URI_TOO_LONG,
                            {"error": f"a request of {len(self.path)} characters: the limit is {MAX_REQUEST_TARGET}"})
            return
        target = urlsplit(self.path)
        if self._send_asset(target.path):
            return
        answer = ABLATION_ROUTES.get(target.path)
        if answer is None:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"{target.path[:80]}: no such page"})
            return
        try:
            query = {k: v[-1] for k, v in parse_qs(target.query, keep_blank_values=True, max_num_fields=16).items()}
            body = answer(self, query)
        except OutsideFolder as e:
            self._send_json(HTTPStatus.FORBIDDEN, {"error": str(e)})
        except NotThere as e:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": str(e)})
        except ValueError as e:  # a name the plan does not hold, a checkpoint that cannot be read
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": one_line(e, 300)})
        except Busy as e:
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - the server stays up; the traceback goes to its terminal
            traceback.print_exc()
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error ({type(e).__name__})"})
        else:
            if isinstance(body, bytes):
                self._send(HTTPStatus.OK, body, "image/png")
            else:
                self._send_json(HTTPStatus.OK, body)

    def do_POST(self) -> None:
        self.close_connection = True
        self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "this page only reads: GET"})

    def _point(self, q: dict) -> tuple:
        return self.server.folder.point(q.get("split", ""), q.get("protocol", "scaled"), q.get("factor", "1"),
                                        q.get("frames", ""))

    def _summary(self, q: dict) -> dict:
        return self.server.folder.summary()

    def _table(self, q: dict) -> dict:
        return self.server.folder.table(q.get("metric", self.server.folder.plan.metric))

    def _curves(self, q: dict) -> dict:
        return self.server.folder.curves(q.get("series", f"val/{self.server.folder.plan.metric}"))

    def _scenes(self, q: dict) -> dict:
        folder = self.server.folder
        return folder.scenes(self._point(q), folder.seed(q.get("seed", "0")), q.get("show", "all"))

    def _image(self, q: dict) -> bytes:
        folder = self.server.folder
        return folder.image(self._point(q), folder.index(q.get("index", "")))

    def _inspect(self, q: dict) -> dict:
        folder = self.server.folder
        arms = list(dict.fromkeys(folder.arm(q.get(k, "")) for k in ("a", "b") if k == "a" or q.get(k)))
        seed, index, point = folder.seed(q.get("seed", "0")), folder.index(q.get("index", "")), self._point(q)
        if not self.server.slots.acquire(blocking=False):
            raise Busy(f"the server is busy ({self.server.settings.max_queued} scenes are waiting for the model); "
                       "try again in a moment")
        try:
            with self.server.lock:
                start = time.perf_counter()
                answer = folder.inspect(arms, seed, index, point)
        finally:
            self.server.slots.release()
        return {**answer, "seconds": round(time.perf_counter() - start, 2)}


class Busy(Exception):
    """The model is in use and ``max_queued`` requests wait for it already."""


ABLATION_ROUTES = {"/api/summary": AblationHandler._summary, "/api/table": AblationHandler._table,
                   "/api/curves": AblationHandler._curves, "/api/scenes": AblationHandler._scenes,
                   "/api/image": AblationHandler._image, "/api/inspect": AblationHandler._inspect}


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
