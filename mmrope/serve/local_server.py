"""What both pages of ``mmrope serve`` share: a server that answers this machine only (unless told otherwise), the
page's files, JSON answers with the page's security headers, one line per failed request, and the loaded models
(:func:`mmrope.serve.server.serve` runs either page).

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
import sys
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

MAX_QUEUED = 4  # requests waiting for the model; a few people sharing a page, not a crowd
# http.server's own log_message escapes these (Python >= 3.12 and recent 3.11): a request line cannot drive the
# terminal it is logged to
ESCAPED = str.maketrans({**{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}, ord("\\"): "\\\\"})
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


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
