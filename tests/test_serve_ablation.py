"""``mmrope serve --ablation``: the page that reads an ablation folder. Its JSON answers against the folder's own
files and the report's statistics, the refusal of every name the plan does not hold and of links out of the folder,
and the page itself in a headless Chromium: table, tests, curves, the scenes an arm gets wrong, two arms' attention.

The folder is built from the session's trained checkpoint (tests/conftest.py) in a few seconds: arm A is that run,
arm B the same weights read under a flat decoder scheme (1D ids, so the two arms differ); both are scored by the
ablation's own scorer (:func:`mmrope.ablation.runner.score_run`) and given a CSV log to draw.

    python tests/test_serve_ablation.py OUT docs/serve_ablation.png [FACTOR]     the README's screenshot of a folder
"""

from __future__ import annotations

import csv
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from mmrope.ablation import runner
from mmrope.ablation.plan import load_plan
from mmrope.ablation.scenes import compare, summarize_scenes
from mmrope.serve.ablation import AblationFolder, OutsideFolder, read_plan
from mmrope.serve.ablation_server import AblationServer, AblationSettings

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("rope2d-mrope_interleaved", "rope2d-flat")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def write_grid(path: Path) -> Path:
    path.write_text(textwrap.dedent(f"""\
        encoders: [rope2d]
        schemes: [mrope_interleaved, flat]
        seeds: 1
        eval: {{splits: [test], factors: [0.5, 1, 2], n: 8, batch_size: 8, max_new_tokens: 8}}
        presets:
          tiny:
            base: {ROOT / "configs/debug.yaml"}
            arms: [{", ".join(ARMS)}]
            max_steps: 30
            threshold: 0.5
            compare: [[{", ".join(ARMS)}]]
        """))
    return path


def lightning_log(path: Path, offset: float) -> None:
    """A CSV log as Lightning writes it: the loss every 5 steps, a validation at steps 15 and 30."""
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", "train/loss", "val/relation"])
        writer.writeheader()
        for step in range(4, 30, 5):
            writer.writerow({"epoch": 0, "step": step, "train/loss": 3 - step / 15 + offset})
        for step, value in ((14, 0.2 + offset), (29, 0.4 + offset)):
            writer.writerow({"epoch": 0, "step": step, "val/relation": value})


@pytest.fixture(scope="module")
def ablation(trained_checkpoint, tmp_path_factory) -> Path:
    """An ablation folder as `mmrope ablate` leaves it, with its plan.json: two arms x one seed, scored."""
    import torch

    root = tmp_path_factory.mktemp("ablation")
    grid = write_grid(root / "grid.yaml")
    out = root / "out"
    plan = load_plan(grid, "tiny")
    checkpoint = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)
    for arm, scheme, offset in ((ARMS[0], "mrope_interleaved", 0.0), (ARMS[1], "flat", 0.1)):
        run_dir = out / arm / "seed0"
        (run_dir / "checkpoints").mkdir(parents=True)
        checkpoint["mmrope"]["config"]["position_scheme"] = scheme
        torch.save(checkpoint, run_dir / "checkpoints" / "last.ckpt")
        (run_dir / "arm.json").write_text(json.dumps(runner.run_signature(plan, "rope2d", scheme, 0)))
        rows, scenes = runner.score_run(plan, run_dir / "checkpoints" / "last.ckpt", device="cpu")
        runner.write_scenes(run_dir / runner.SCENES_FILE, scenes)
        (run_dir / "eval.json").write_text(json.dumps({"eval": plan.eval_settings(), "rows": rows}))
        lightning_log(run_dir / "logs" / "version_0" / "metrics.csv", offset)
    (out / "plan.json").write_text(json.dumps({"grid": str(grid), "preset": "tiny", "seeds": 1, "max_steps": 30,
                                               "arms": list(ARMS)}))
    return out


def predictions(out: Path, arm: str, factor: float = 1.0) -> dict[int, dict]:
    with open(out / arm / "seed0" / runner.SCENES_FILE) as f:
        return {int(r["index"]): r for r in csv.DictReader(f) if float(r["factor"]) == factor}


@pytest.fixture(scope="module")
def server(ablation):
    httpd = AblationServer(("127.0.0.1", 0), AblationSettings(AblationFolder(ablation, read_plan(ablation))))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def get(httpd, path: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None, **query):
    connection = http.client.HTTPConnection(*httpd.server_address[:2], timeout=120)
    connection.request(method, path + ("?" + urlencode(query) if query else ""), body, headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    kind = response.getheader("Content-Type")
    return response, json.loads(data) if kind == "application/json" else data


def test_the_page_answers_from_the_folder_and_the_report(server, ablation):
    plan = server.folder.plan
    response, page = get(server, "/")
    assert response.status == 200 and b"ablation.js" in page
    assert "default-src 'none'" in response.getheader("Content-Security-Policy")

    _, summary = get(server, "/api/summary")
    assert summary["arms"] == list(ARMS) and summary["seeds"] == [0] and summary["metric"] == "relation"
    assert [p["label"] for p in summary["points"]] == ["16 px (0.5x)", "32 px (1x)", "64 px (2x)"]
    assert [p["train"] for p in summary["points"]] == [False, True, False]
    assert summary["series"][0] == "val/relation" and "train/loss" in summary["series"]
    assert summary["scored"] == summary["trained"] == {arm: [0] for arm in ARMS} and summary["refused"] == []
    runs = server.folder.read_runs()
    [stated] = compare(plan, runs)  # the test results.md reports, to the digit
    [shown] = summary["comparisons"]
    assert (shown["a"], shown["b"], shown["only_a"], shown["only_b"]) == (ARMS[0], ARMS[1], stated["only_a"],
                                                                         stated["only_b"])
    assert shown["p"] == stated["p"] and shown["diff"] == stated["diff"] and shown["verdict"] == stated["verdict"]
    assert shown["arms"] == list(ARMS) and shown["interaction"] is False  # the page's scene view starts on them
    assert summary["looks"] == plan.looks == 1 and summary["level"] == 0.05  # what the page reads them at

    _, table = get(server, "/api/table", metric="relation")
    cells = {(c["arm"], c["factor"]): c for c in table["cells"]}
    assert len(cells) == 2 * 3
    for cell in summarize_scenes(plan, runs, ("relation",)):
        assert (cells[cell["arm"], cell["factor"]]["mean"], cells[cell["arm"], cell["factor"]]["low"],
                cells[cell["arm"], cell["factor"]]["high"]) == cell["relation"]
    written = predictions(ablation, ARMS[0])
    assert cells[ARMS[0], 1.0]["mean"] == pytest.approx(sum(float(r["relation"]) for r in written.values()) / 8)

    _, curves = get(server, "/api/curves", series="val/relation")
    assert curves["threshold"] == 0.5 and curves["max_steps"] == 30
    assert curves["arms"][1]["seeds"]["0"] == [[15, pytest.approx(0.3)], [30, pytest.approx(0.5)]]
    assert curves["arms"][1]["mean"] == curves["arms"][1]["seeds"]["0"]  # one seed: its own mean
    _, loss = get(server, "/api/curves", series="train/loss")
    assert [s for s, _ in loss["arms"][0]["seeds"]["0"]] == [5, 10, 15, 20, 25, 30] and loss["threshold"] is None

    _, every = get(server, "/api/scenes", split="test", factor="1", seed="0")
    assert every["total"] == 8 and [r["index"] for r in every["rows"]] == list(range(8))
    other = predictions(ablation, ARMS[1])
    for row in every["rows"]:
        assert row["arms"][ARMS[0]]["prediction"] == written[row["index"]]["prediction"]
        assert row["arms"][ARMS[1]]["prediction"] == other[row["index"]]["prediction"]
    _, wrong = get(server, "/api/scenes", split="test", factor="1", seed="0", show=f"wrong:{ARMS[0]}")
    expected = [i for i, r in sorted(written.items()) if float(r["relation"]) < 0.5]
    assert [r["index"] for r in wrong["rows"]] == expected and wrong["counts"][ARMS[0]]["wrong"] == len(expected)

    response, png = get(server, "/api/image", split="test", factor="2", index="3")
    assert response.status == 200 and response.getheader("Content-Type") == "image/png"
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(png)).size == (128, 128)  # 64 px, enlarged twice


def test_the_inspector_shows_two_arms_at_and_off_the_training_size(server, ablation):
    index = 2
    _, answer = get(server, "/api/inspect", a=ARMS[0], b=ARMS[1], seed="0", split="test", index=str(index),
                    factor="2")
    panels = answer["panels"]
    assert [(p["arm"], p["point"]["label"]) for p in panels] == [
        (ARMS[0], "32 px (1x)"), (ARMS[0], "64 px (2x)"), (ARMS[1], "32 px (1x)"), (ARMS[1], "64 px (2x)")]
    assert [p["scheme"] for p in panels] == ["mrope_interleaved"] * 2 + ["flat"] * 2
    for p in panels:
        factor = 1.0 if p["point"]["train"] else 2.0
        assert p["caption"] == p["written"] == predictions(ablation, p["arm"], factor)[index]["prediction"]
        assert [w["word"] for w in p["words"]] == p["caption"].split()
        side = p["size"][0] // 16  # merged tokens per side
        assert p["ids"]["tokens"][1: 1 + side * side] == [f"img {i},{j}" for i in range(side) for j in range(side)]
        assert p["image"].startswith("data:image/png;base64,")
    assert panels[0]["ids"]["w"] != panels[2]["ids"]["w"]  # the two schemes place the caption differently
    response, answer = get(server, "/api/inspect", a=ARMS[0], seed="0", split="test", index="0", factor="1")
    assert response.status == 200 and len(answer["panels"]) == 1  # one arm, at the training size only


def test_names_the_plan_does_not_hold_and_links_out_of_the_folder_are_refused(server, ablation, tmp_path):
    refusals = {
        ("/api/scenes", "arm"): {"split": "test", "seed": "0", "show": "wrong:../../etc"},
        ("/api/scenes", "seed"): {"split": "test", "seed": "0/../../x"},
        ("/api/scenes", "split"): {"split": "../test"},
        ("/api/scenes", "point"): {"split": "test", "factor": "3"},
        ("/api/image", "scene"): {"split": "test", "index": "8"},
        ("/api/image", "scene "): {"split": "test", "index": "-1"},
        ("/api/table", "metric"): {"metric": "../relation"},
        ("/api/curves", "series"): {"series": "../../etc/passwd"},
        ("/api/inspect", "arm"): {"a": "/etc/passwd", "seed": "0", "split": "test", "index": "0"},
        ("/api/inspect", "seed"): {"a": ARMS[0], "seed": "1", "split": "test", "index": "0"},
    }
    for (path, word), query in refusals.items():
        response, answer = get(server, path, **query)
        assert response.status == 400 and answer["error"].startswith(word.strip()), (path, query, answer)
    assert get(server, "/../../etc/passwd")[0].status == 404
    assert get(server, "/api/summary", {"Host": "attacker.example"})[0].status == 421  # DNS rebinding
    assert get(server, "/api/summary", method="POST", body=b"x")[0].status == 405
    assert get(server, "/api/summary", {"Content-Length": "5"}, body=b"hello")[0].status == 400
    assert get(server, "/api/scenes", split="x" * 3000)[0].status == 414
    fields = "&".join(f"f{i}=1" for i in range(20))
    assert get(server, f"/api/summary?{fields}")[0].status == 400

    # a folder whose files lead elsewhere (a checkpoint, a run's predictions, a log), and a run scored on other scenes
    copy, outside = tmp_path / "out", tmp_path / "elsewhere"
    shutil.copytree(ablation, copy)
    marker = copy / ARMS[0] / "seed0" / "eval.json"
    scored = json.loads(marker.read_text())
    marker.write_text(json.dumps({**scored, "eval": {**scored["eval"], "n": 500}}))
    outside.mkdir()
    shutil.move(copy / ARMS[0] / "seed0" / "checkpoints", outside / "checkpoints")
    (copy / ARMS[0] / "seed0" / "checkpoints").symlink_to(outside / "checkpoints")
    shutil.move(copy / ARMS[1] / "seed0" / runner.SCENES_FILE, outside / runner.SCENES_FILE)
    (copy / ARMS[1] / "seed0" / runner.SCENES_FILE).symlink_to(outside / runner.SCENES_FILE)
    shutil.move(copy / ARMS[1] / "seed0" / "logs", outside / "logs")
    (copy / ARMS[1] / "seed0" / "logs").symlink_to(outside / "logs")
    httpd = AblationServer(("127.0.0.1", 0), AblationSettings(AblationFolder(copy, read_plan(copy))))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        _, summary = get(httpd, "/api/summary")
        assert summary["scored"] == {ARMS[0]: [], ARMS[1]: []} and summary["trained"] == {ARMS[0]: [], ARMS[1]: [0]}
        assert summary["refused"] == [
            f"{ARMS[1]}/seed0/{runner.SCENES_FILE} leads outside the ablation folder; not read",
            f"{ARMS[0]}/seed0: scored with other evaluation settings than the plan's (n); not shown"]
        marker.write_text(json.dumps(scored))  # the plan's scenes again: shown again
        assert get(httpd, "/api/summary")[1]["scored"] == {ARMS[0]: [0], ARMS[1]: []}
        assert get(httpd, "/api/curves", series="train/loss")[1]["arms"][1]["seeds"] == {}
        response, answer = get(httpd, "/api/inspect", a=ARMS[0], seed="0", split="test", index="0")
        assert response.status == 403 and answer["error"].endswith("leads outside the ablation folder; not read")
        with pytest.raises(OutsideFolder):
            httpd.folder.file(ARMS[0], 0, "checkpoints", "last.ckpt")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_plan_comes_from_plan_json_or_the_grid_flags(ablation, tmp_path, capsys):
    from mmrope import cli

    copy = tmp_path / "out"
    shutil.copytree(ablation, copy, ignore=shutil.ignore_patterns("*.ckpt"))
    record = json.loads((copy / "plan.json").read_text())
    (copy / "plan.json").unlink()
    with pytest.raises(ValueError, match="no plan.json: give the grid it was run with, --grid GRID --preset PRESET"):
        read_plan(copy)
    plan = read_plan(copy, record["grid"], "tiny")  # seeds and steps as the runs' arm.json say
    assert [f"{e}-{s}" for e, s in plan.arms] == list(ARMS) and plan.seeds == [0] and plan.max_steps == 30
    with pytest.raises(ValueError, match="--grid and --preset go together"):
        read_plan(copy, record["grid"])
    (copy / "plan.json").write_text('{"grid": ')
    with pytest.raises(ValueError, match=r"plan.json: cannot be read .*; give --grid and --preset"):
        read_plan(copy)

    for args, line in (
            (["--ablation", str(tmp_path / "missing")], f"--ablation {tmp_path / 'missing'}: no such folder"),
            (["--ablation", str(copy), "--ckpt-dir", "runs"], "--ckpt-dir is the caption page's"),
            (["--grid", record["grid"], "--preset", "tiny"], "--grid and --preset go with --ablation OUT")):
        assert cli.main(["serve", *args]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and line in err, err


def drive(page, url: str, screenshot: Path | None = None, point: str | None = None) -> dict:
    """Open the page, read its table, pick the scenes the first arm gets wrong (at the training size, or at
    ``point``, a value of the size select such as ``scaled|1.5|``) and inspect the first (or the first scene) -> what
    it showed."""
    page.goto(url)
    page.wait_for_selector("#table tbody tr")
    page.wait_for_selector("#curves path.mean", state="attached")
    page.wait_for_selector("#scenes tbody tr, #scenes-note:not(:empty)", state="attached")
    shown = {"arms": page.eval_on_selector_all("#table tbody th", "cells => cells.map(c => c.textContent)"),
             "columns": page.eval_on_selector_all("#table thead th", "cells => cells.map(c => c.textContent)"),
             "cells": page.eval_on_selector_all("#table tbody td", "cells => cells.map(c => c.textContent)"),
             "comparisons": page.locator("#comparisons tbody tr").count(),
             "compare_head": page.locator("#comparisons thead").inner_text(),
             "means": page.locator("#curves path.mean").count(), "seeds": page.locator("#curves path.seed").count()}
    page.select_option("#show", "all")
    page.wait_for_selector('#scenes[data-show="all"]', state="attached")
    page.wait_for_function("() => { const i = document.querySelector('#scenes tbody img'); "
                           "return i && i.complete && i.naturalWidth > 0; }")
    shown["all"] = page.locator("#scenes tbody tr").count()
    arm = shown["arms"][0]
    if point is not None:
        page.select_option("#scene-point", point)
        page.wait_for_selector(f'#scenes[data-point="{point}"]', state="attached")
    page.select_option("#show", f"wrong:{arm}")
    page.wait_for_selector(f'#scenes[data-show="wrong:{arm}"]', state="attached")
    shown["wrong"] = page.eval_on_selector_all("#scenes tbody td.index", "cells => cells.map(c => +c.textContent)")
    if not shown["wrong"]:
        page.select_option("#show", "all")
        page.wait_for_selector('#scenes[data-show="all"] tbody tr button')
    page.click("#scenes tbody tr button")
    page.wait_for_selector("#panels .panel .overlays img", timeout=120_000)
    page.wait_for_function("document.querySelectorAll('#panels .panel').length >= 2")
    shown["scene"] = int(page.get_attribute("#panels", "data-scene"))
    shown["panels"] = page.eval_on_selector_all(
        "#panels .panel", "panels => panels.map(p => [p.querySelector('h3').textContent, "
                          "p.querySelector('.caption').textContent, p.querySelectorAll('.overlays img').length, "
                          "p.querySelectorAll('details tbody tr').length])")
    if screenshot is not None:
        page.click("#panels details summary")
        page.screenshot(path=str(screenshot), full_page=True)
    return shown


def browser_or_skip():
    missing = pytest.fail if os.environ.get("MMROPE_REQUIRE_BROWSER") else pytest.skip  # CI (.ci/run) requires it
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing("chromium is not installed (apt-get install chromium)")
    return sync_playwright, chromium


def start_page(out: Path, workdir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "mmrope", "serve", "--ablation", str(out), "--port", "0"]
    with open(log, "w") as stderr:
        server = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = server.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if not match:
        server.kill()
        raise AssertionError(line + log.read_text())
    return server, match.group(0)


def test_page_in_a_headless_browser(ablation, tmp_path):
    """The page as a reader meets it: `mmrope serve --ablation` started as a command, a real Chromium reading it."""
    sync_playwright, chromium = browser_or_skip()
    workdir, log = tmp_path / "workdir", tmp_path / "server.log"
    workdir.mkdir()
    before = sorted(p.relative_to(ablation) for p in ablation.rglob("*"))
    server, url = start_page(ablation, workdir, log)
    try:
        outside, problems = [], []
        started = time.perf_counter()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith((url, "data:")) else outside.append(r.url))
            shown = drive(page, url, tmp_path / "serve_ablation.png")
            browser.close()
        print(f"browser session: {time.perf_counter() - started:.1f} s")
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert server.returncode == 0, log.read_text()
    assert outside == [] and problems == []  # nothing fetched from elsewhere, no script error
    assert shown["arms"] == list(ARMS) and shown["columns"][2] == "32 px (1x) train"
    cells = {(c["arm"], c["factor"]): c for c in summarize_scenes(load_plan(ablation.parent / "grid.yaml", "tiny"),
                                                                  AblationFolder(ablation, read_plan(ablation))
                                                                  .read_runs(), ("relation",))}
    mean, low, high = cells[ARMS[1], 2.0]["relation"]
    assert shown["cells"][5] == f"{mean:.3f} [{low:.2f}, {high:.2f}]"  # as results.md writes the cell
    assert shown["comparisons"] == 1 and shown["means"] == 2 and shown["seeds"] == 2
    assert "A - B [95% CI]" in shown["compare_head"]
    written = predictions(ablation, ARMS[0])
    assert shown["all"] == 8
    assert shown["wrong"] == [i for i, r in sorted(written.items()) if float(r["relation"]) < 0.5]
    assert [(title, overlays, ids) for title, _, overlays, ids in shown["panels"]] == [
        (f"{arm} {size}", len(caption.split()), 3) for size in ("32 px (1x) (training size)", "64 px (2x)")
        for arm, caption in ((a, predictions(ablation, a, 1.0 if "1x" in size else 2.0)[shown["scene"]]
                              ["prediction"]) for a in ARMS)]
    assert [caption for _, caption, _, _ in shown["panels"][:2]] == [
        predictions(ablation, arm)[shown["scene"]]["prediction"] for arm in ARMS]
    assert (tmp_path / "serve_ablation.png").stat().st_size > 10_000
    assert sorted(p.relative_to(ablation) for p in ablation.rglob("*")) == before  # the folder is only read
    assert list(workdir.iterdir()) == []


if __name__ == "__main__":  # python tests/test_serve_ablation.py OUT docs/serve_ablation.png [FACTOR]
    from playwright.sync_api import sync_playwright

    out, target = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
    point = f"scaled|{float(sys.argv[3]) if len(sys.argv) > 3 else 1.5:g}|"  # the scenes an arm gets wrong off-size
    server, url = start_page(out, Path.cwd(), Path(os.devnull))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            drive(browser.new_page(viewport={"width": 1300, "height": 900}), url, target, point)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    from PIL import Image

    with Image.open(target) as shot:  # 256 colours: a third of the bytes, the text as sharp
        shot = shot.convert("RGB").quantize(256, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    shot.save(target, optimize=True)
    print(f"wrote {target}")
