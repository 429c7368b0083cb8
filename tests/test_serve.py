"""``mmrope serve``: the checkpoints a client may pick, what the page is sent for an image and a clip, the server's
limits and refusals over real HTTP, and the page itself in a headless Chromium: a file uploaded, its caption and one
attention overlay per word shown, a bad file's one-line error."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import urlencode

import pytest
from test_clip_files import gif_of_dots

from mmrope.data.images import ImageError
from mmrope.inference import load
from mmrope.serve.explain import explain
from mmrope.serve.local_server import is_loopback
from mmrope.serve.server import CaptionServer, CheckpointFolder, Settings

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data/samples"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds none: refusing it must not need its pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 1000) + b"IDAT" + zlib.compress(b"\0" * 64)[:8]


def test_checkpoint_folder_offers_only_its_own_files(tmp_path):
    root, outside = tmp_path / "runs", tmp_path / "elsewhere.ckpt"
    (root / "a" / "checkpoints").mkdir(parents=True)
    (root / "a" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (root / "a" / "checkpoints" / ".saving-1.ckpt").write_bytes(b"x")  # an atomic write in flight
    (root / "exported").mkdir()
    (root / "exported" / "config.json").write_text("{}")
    (root / "exported" / "model.safetensors").write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    outside.write_bytes(b"x")
    (root / "link.ckpt").symlink_to(outside)  # leads outside the folder: not offered
    folder = CheckpointFolder(root)
    assert folder.names() == ["a/checkpoints/last.ckpt", "exported"]
    assert folder.resolve("1") == ("exported", root.resolve() / "exported")
    assert folder.resolve("a/checkpoints/last.ckpt")[1] == root.resolve() / "a/checkpoints/last.ckpt"
    for choice in ("2", "-1", "link.ckpt", "../elsewhere.ckpt", str(outside), "notes.txt", "", "a/checkpoints"):
        with pytest.raises(ValueError, match="is not one of the 2 offered"):
            folder.resolve(choice)
    with pytest.raises(ValueError, match="no such folder"):
        CheckpointFolder(tmp_path / "missing")


def test_explain_shows_what_the_commands_compute(trained_checkpoint):
    pipeline = load(trained_checkpoint, device="cpu")
    image = SAMPLES / "shapes_l2.png"
    answer = explain(pipeline, image, num_beams=3, max_new_tokens=8)
    assert answer["caption"] == pipeline.caption([image], max_new_tokens=8)[0]  # what mmrope caption prints
    beam = pipeline.caption([image], strategy="beam", num_beams=3, max_new_tokens=8)[0]
    assert len(answer["alternatives"]) == 3 and answer["alternatives"][0] == beam
    assert explain(pipeline, image, strategy="beam", num_beams=3, max_new_tokens=8)["caption"] == beam
    words, ids = answer["words"], answer["ids"]
    assert [w["word"] for w in words] == answer["caption"].split()  # one overlay per word of a word tokenizer
    assert all(w["overlay"].startswith("data:image/png;base64,") and 0 < w["share"] <= 1 for w in words)
    side = pipeline.config.vision.image_size // 16  # merged tokens per side
    assert ids["tokens"][: side * side + 2] == ["<vs>"] + [f"img {i},{j}" for i in range(side)
                                                          for j in range(side)] + ["<ve>"]
    assert ids["tokens"][side * side + 2:] == [w["word"] for w in words]
    assert len(ids["t"]) == len(ids["h"]) == len(ids["w"]) == len(ids["tokens"])
    assert ids["h"][1: 1 + side * side] == [1 + i for i in range(side) for _ in range(side)]  # M-RoPE rows

    clip = explain(pipeline, SAMPLES / "clips/moves.gif", num_beams=1, max_new_tokens=4)
    assert clip["kind"] == "clip" and clip["frames"] == 6 and clip["alternatives"] == []
    assert clip["ids"]["tokens"][1] == "vid 0,0,0" and clip["ids"]["tokens"][side * side + 1] == "vid 1,0,0"
    assert clip["ids"]["t"][side * side + 1] == clip["ids"]["t"][1] + 1  # the next temporal patch, one t later
    with pytest.raises(ImageError, match="not an image"):
        explain(pipeline, SAMPLES / "captions.csv")


@pytest.fixture(scope="module")
def server(trained_checkpoint, tmp_path_factory):
    """A server in a thread: the trained run's folder offered, 1600 pixels and 4 KiB at most."""
    uploads = tmp_path_factory.mktemp("uploads")
    settings = Settings(trained_checkpoint.parents[1], max_bytes=4096, max_pixels=1600, max_new_tokens=6)
    httpd = CaptionServer(("127.0.0.1", 0), settings, uploads)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, uploads
    httpd.shutdown()
    httpd.server_close()


def request(httpd, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 120):
    connection = http.client.HTTPConnection(*httpd.server_address[:2], timeout=timeout)
    connection.request(method, path, body, {"X-Requested-With": "mmrope", **(headers or {})})
    response = connection.getresponse()
    answer = json.loads(response.read()) if response.getheader("Content-Type") == "application/json" else None
    connection.close()
    return response, answer


def upload(httpd, body: bytes, name: str = "x.png", timeout: float = 120, **query):
    query = {"ckpt": "checkpoints/last.ckpt", "name": name, **query}
    return request(httpd, "POST", "/api/caption?" + urlencode(query), body, timeout=timeout)


def test_server_captions_and_refuses_what_it_should(server, tmp_path):
    httpd, uploads = server
    response, _ = request(httpd, "GET", "/")
    assert response.status == 200 and "default-src 'none'" in response.getheader("Content-Security-Policy")
    _, info = request(httpd, "GET", "/api/info")
    assert "checkpoints/last.ckpt" in info["checkpoints"] and info["max_bytes"] == 4096

    small = (SAMPLES / "clips/appears.webp").read_bytes()  # 48 x 48 frames: over 1600 pixels
    response, answer = upload(httpd, small, name="../../appears.webp")
    assert response.status == 400 and answer == {"error": "appears.webp: 48x48 = 2304 pixels is over the limit "
                                                          "max_pixels=1600"}
    bomb = png_header_only(10000, 10000)  # refused from its header: it has no pixels to decode
    assert upload(httpd, bomb)[1]["error"] == "x.png: 10000x10000 = 100000000 pixels is over the limit max_pixels=1600"
    assert upload(httpd, b"hello", name="notes.png")[1] == {"error": "notes.png: not an image (format not recognised)"}
    assert upload(httpd, b"", name="empty.png")[1] == {"error": "empty.png: empty file"}

    connection = http.client.HTTPConnection(*httpd.server_address[:2], timeout=30)
    connection.putrequest("POST", "/api/caption?ckpt=0&name=big.png")  # says 1 GB, sends nothing: answered at once
    connection.putheader("X-Requested-With", "mmrope")
    connection.putheader("Content-Length", str(10**9))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"] == "big.png: 1000000000 bytes is over the upload limit of 4096 bytes"
    connection.close()

    tiny = tmp_path / "tiny.png"  # 32 x 32: within both limits
    from PIL import Image

    with Image.open(SAMPLES / "shapes_l1.png") as image:
        image.resize((32, 32)).save(tiny)
    response, answer = upload(httpd, tiny.read_bytes(), name="tiny.png", strategy="beam", beams="2")
    assert response.status == 200, answer
    assert answer["name"] == "tiny.png" and answer["caption"] and len(answer["alternatives"]) == 2
    assert upload(httpd, tiny.read_bytes(), ckpt="../checkpoints/last.ckpt")[0].status == 400
    assert upload(httpd, tiny.read_bytes(), ckpt=str(tiny))[1]["error"].endswith(" offered")
    assert upload(httpd, tiny.read_bytes(), beams="99")[0].status == 400
    response, answer = request(httpd, "POST", "/api/caption?ckpt=0", tiny.read_bytes(), {"X-Requested-With": ""})
    assert response.status == 403  # what a form on another site would send
    response, _ = request(httpd, "GET", "/api/info", headers={"Host": "attacker.example:80"})
    assert response.status == 421  # DNS rebinding: a foreign name that resolves here
    assert request(httpd, "GET", "/../../etc/passwd")[0].status == 404
    assert list(uploads.iterdir()) == []  # every upload removed once answered


def test_page_in_a_headless_browser(trained_checkpoint, tmp_path):
    """The page as a user meets it: `mmrope serve` started as a command, a real Chromium uploading files."""
    missing = pytest.fail if os.environ.get("MMROPE_REQUIRE_BROWSER") else pytest.skip  # CI (.ci/run) requires it
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing("chromium is not installed (apt-get install chromium)")
    expected = load(trained_checkpoint, device="cpu").caption([SAMPLES / "shapes_l2.png"], max_new_tokens=8)[0]
    command = [sys.executable, "-m", "mmrope", "serve", "--ckpt-dir", str(trained_checkpoint.parents[1]), "--port",
               "0", "--max-new-tokens", "8"]
    workdir, log = tmp_path / "workdir", tmp_path / "server.log"
    workdir.mkdir()
    with open(log, "w") as stderr:
        server = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = server.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert match, line + log.read_text()
        url = match.group(0)
        outside, problems = [], []
        started = time.perf_counter()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            expected_refusal = "the server responded with a status of 400"  # Chromium logs the bad file's answer
            page.on("console", lambda m: problems.append(m.text)
                    if m.type == "error" and expected_refusal not in m.text else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith((url, "data:")) else outside.append(r.url))
            page.goto(url)
            page.wait_for_selector("#ckpt option", state="attached")
            assert page.input_value("#ckpt") == "checkpoints/last.ckpt"

            page.set_input_files("#file", str(SAMPLES / "shapes_l2.png"))
            page.wait_for_selector("#overlays img", timeout=120_000)
            assert page.text_content("#caption") == expected
            overlays = page.eval_on_selector_all("#overlays img", "images => images.map(i => i.naturalWidth)")
            assert len(overlays) == len(expected.split()) and min(overlays) > 0  # decoded pictures, one per word
            assert page.eval_on_selector_all("#ids tbody tr", "rows => rows.length") == 3  # t, h, w
            assert page.locator("#alternatives li").count() == 4
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)

            bad = tmp_path / "notes.png"  # what a user may well drop: text saved under an image's name
            bad.write_text("not a picture")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#error:not([hidden])", timeout=60_000)
            assert page.text_content("#error") == "notes.png: not an image (format not recognised)"
            browser.close()
        print(f"browser session: {time.perf_counter() - started:.1f} s")
        assert outside == [] and problems == []  # nothing fetched from elsewhere, no script error
        assert (tmp_path / "serve.png").stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert server.returncode == 0, log.read_text()
    uploads = Path(re.search(r"uploads go to (\S+),", log.read_text()).group(1))
    assert not uploads.parent.exists()  # the temporary folder goes with the server
    assert list(workdir.iterdir()) == []  # nothing written where it ran


def test_serve_help_and_bad_flags(capsys):
    from mmrope import cli

    assert cli.main(["serve", "--ckpt-dir", "/nonexistent/runs"]) == 1
    assert "--ckpt-dir /nonexistent/runs: no such folder" in capsys.readouterr().err
    assert cli.main(["serve", "--max-bytes", "0"]) == 1
    assert "--max-bytes must be positive" in capsys.readouterr().err


def tiny_png(tmp_path) -> bytes:
    from PIL import Image

    with Image.open(SAMPLES / "shapes_l1.png") as image:
        image.resize((32, 32)).save(tmp_path / "tiny.png")
    return (tmp_path / "tiny.png").read_bytes()


def raw_exchange(httpd, data: bytes) -> bytes:
    """Send ``data`` as it is (what http.client would refuse to send) -> the whole answer."""
    with socket.create_connection(httpd.server_address[:2], timeout=30) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def server_log(capsys, until: str, seconds: float = 10) -> str:
    """What the server thread wrote to stderr, once it holds ``until`` (or ``seconds`` have passed)."""
    log, deadline = "", time.monotonic() + seconds
    while until not in log and time.monotonic() < deadline:
        time.sleep(0.05)
        log += capsys.readouterr().err
    return log


def test_bad_requests_and_departing_clients_cost_one_line_each(server, capsys):
    """Once each of these printed a traceback on the server's terminal, or wrote the client's escape codes to it."""
    httpd, uploads = server
    post = b"POST /api/caption?ckpt=0&name=x.png HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Requested-With: mmrope\r\n"
    cases = {
        post + b"Content-Length: \xb2\r\n\r\n": b"HTTP/1.0 411 ",  # a superscript 2: str.isdigit() says yes
        post + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n": b"HTTP/1.0 413 ",  # int() refuses 5000 digits
        b"GET /api/info HTTP/1.1\r\nHost: [\r\n\r\n": b"HTTP/1.0 421 ",  # urlsplit("//[") raises
        b"GET /\x1b[2J\x1b]0;owned\x07 HTTP/1.1\r\nHost: localhost\r\n\r\n": b"HTTP/1.0 404 ",
    }
    for data, status in cases.items():
        assert raw_exchange(httpd, data).startswith(status), data[:80]
    log = server_log(capsys, "404")
    assert "5000-digit" not in log and "Traceback" not in log and "\x1b" not in log and "\x07" not in log
    assert '"GET /\\x1b[2J\\x1b]0;owned\\x07 HTTP/1.1" 404' in log  # escaped, as http.server's own log does

    connection = socket.create_connection(httpd.server_address[:2], timeout=30)  # leaves halfway through its file
    connection.sendall(post + b"Content-Length: 1000\r\n\r\n" + b"\x89PNG" * 4)
    time.sleep(0.5)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    connection.close()
    log = server_log(capsys, "abandoned")
    assert "x.png: upload abandoned (ConnectionResetError)" in log and "Traceback" not in log, log
    assert list(uploads.iterdir()) == []
    response, _ = request(httpd, "GET", "/api/info")
    assert response.status == 200  # and the server goes on


def test_a_gif_bomb_upload_is_refused_quickly(server, capsys):
    """A 7 KB GIF of 300 4000 x 4000 frames held the model lock 25 s while other uploads waited."""
    httpd, _ = server
    limit = httpd.settings.max_clip_pixels
    httpd.settings.max_pixels, httpd.settings.max_bytes = 50_000_000, 32 * 2**20
    try:
        start = time.perf_counter()
        response, answer = upload(httpd, gif_of_dots(4000, 4000, 300), name="dots.gif")
        assert time.perf_counter() - start < 5
    finally:
        httpd.settings.max_pixels, httpd.settings.max_bytes = 1600, 4096
    assert response.status == 400 and answer == {
        "error": f"dots.gif: 300 frames of 4000x4000 = 4800000000 pixels to decode is over the limit "
                 f"max_clip_pixels={limit}"}


def test_a_busy_server_answers_503_at_once(trained_checkpoint, tmp_path):
    """Uploads waiting for the model are bounded (max_queued); one more is told to come back, not queued."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    settings = Settings(trained_checkpoint.parents[1], max_new_tokens=2, max_queued=1)
    httpd = CaptionServer(("127.0.0.1", 0), settings, uploads)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    png, answers = tiny_png(tmp_path), []
    httpd.lock.acquire()  # the model is busy
    try:
        waiting = [threading.Thread(target=lambda: answers.append(upload(httpd, png))) for _ in range(2)]
        for thread in waiting:  # one captioned (once the lock is free) and one queued behind it
            thread.start()
        deadline = time.monotonic() + 30
        while len(list(uploads.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        start = time.perf_counter()
        response, answer = upload(httpd, png, name="third.png", timeout=10)
        assert time.perf_counter() - start < 5
        assert response.status == 503 and response.getheader("Retry-After") == "5"
        assert answer == {"error": "third.png: the server is busy (1 uploads are waiting for the model); try again "
                                   "in a moment"}
    finally:
        httpd.lock.release()
    for thread in waiting:
        thread.join(120)
    assert [response.status for response, _ in answers] == [200, 200]
    assert upload(httpd, png)[0].status == 200  # the slots are free again
    httpd.shutdown()
    httpd.server_close()


def test_a_loopback_address_keeps_the_host_check(trained_checkpoint, tmp_path):
    """--host 127.0.0.2 once turned the DNS-rebinding check off: it is decided by whether the address is loopback."""
    assert all(map(is_loopback, ("127.0.0.1", "127.0.0.2", "127.255.0.9", "::1", "::ffff:127.0.0.1", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.com", "localhost.evil")))
    httpd = CaptionServer(("127.0.0.2", 0), Settings(trained_checkpoint.parents[1]), tmp_path)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        assert httpd.loopback_only
        port = httpd.server_address[1]
        for host, status in ((f"127.0.0.2:{port}", 200), ("localhost", 200), (f"[::1]:{port}", 200),
                             ("attacker.example", 421), ("attacker.example:80", 421), ("[", 421)):
            assert request(httpd, "GET", "/api/info", headers={"Host": host})[0].status == status, host
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_port_that_cannot_be_listened_on_is_one_line(tmp_path, capsys):
    from mmrope import cli

    assert cli.main(["serve", "--ckpt-dir", str(tmp_path), "--port", "99999"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == ("mmrope serve: error: --port 99999: expected 0 to 65535 "
                                                        "(0 picks a free one)")
    handler = signal.getsignal(signal.SIGTERM)  # run_serve sets its own before it listens
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            assert cli.main(["serve", "--ckpt-dir", str(tmp_path), "--port", str(port)]) == 1
        finally:
            signal.signal(signal.SIGTERM, handler)
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"mmrope serve: error: cannot listen on 127.0.0.1 port {port}: Address already "
                                    "in use")
    assert "Traceback" not in err
