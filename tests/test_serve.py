"""``mmrope serve``: the checkpoints a client may pick, what the page is sent for an image and a clip, the server's
limits and refusals over real HTTP, and the page itself in a headless Chromium: a file uploaded, its caption and one
attention overlay per word shown, a bad file's one-line error."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import urlencode

import pytest

from mmrope.data.images import ImageError
from mmrope.inference import load
from mmrope.serve.explain import explain
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


def request(httpd, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection(*httpd.server_address[:2], timeout=120)
    connection.request(method, path, body, {"X-Requested-With": "mmrope", **(headers or {})})
    response = connection.getresponse()
    answer = json.loads(response.read()) if response.getheader("Content-Type") == "application/json" else None
    connection.close()
    return response, answer


def upload(httpd, body: bytes, name: str = "x.png", **query):
    query = {"ckpt": "checkpoints/last.ckpt", "name": name, **query}
    return request(httpd, "POST", "/api/caption?" + urlencode(query), body)


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
