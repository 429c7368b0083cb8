"""The grid on a Ray cluster (``mmrope ablate --cluster ray``), against a real one: a head and a second node started
with ``ray start`` on this machine, on loopback addresses. A tiny grid gives the results it gives here, though the
second node is killed with its run in flight, and every run is trained and scored once; a run that fails is reported,
not retried. Without Ray, ``--cluster ray`` is one line saying how to install it.

The cluster tests are marked ``cluster`` and need the cluster extra (``pip install -e ".[dev,cluster]"``); they
skip without Ray unless ``MMROPE_REQUIRE_RAY=1`` (CI) makes that a failure. ``pytest -m cluster`` runs only them."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

import pytest
from test_ablation import TINY_ARMS
from test_ablation import tiny_grid as ablation_grid

from mmrope import cli
from mmrope.ablation import plan as plan_module
from mmrope.ablation.cluster import RayCluster, task_resources
from mmrope.ablation.plan import load_plan
from mmrope.ablation.processes import DIE_WITH_PARENT, run_process

ROOT = Path(__file__).resolve().parents[1]
ARMS = TINY_ARMS


def tiny_grid(folder: Path) -> Path:
    """tests/test_ablation.py's grid (two arms of the debug model, 4 steps) with a second seed."""
    return ablation_grid(folder, seeds=2)


def test_task_resources_come_from_the_runs_config(tmp_path):
    """A CPU config asks for one CPU and no GPU; the gpu preset's 11 arms side by side share each GPU; flags win."""
    tiny = load_plan(tiny_grid(tmp_path), "tiny")
    assert task_resources(tiny, RayCluster()) == {"num_cpus": 1.0, "num_gpus": 0.0}
    gpu = load_plan(ROOT / "configs/ablation/shapes.yaml", "gpu")
    assert (gpu.engine, gpu.parallel) == ("stacked", 11)
    assert task_resources(gpu, RayCluster()) == {"num_cpus": 1.0, "num_gpus": pytest.approx(1 / 11)}
    assert task_resources(gpu, RayCluster(cpus=4, gpus=1)) == {"num_cpus": 4.0, "num_gpus": 1.0}
    two = load_plan(tiny_grid(tmp_path), "tiny")
    two.train = {**two.train, "trainer.accelerator": "gpu", "trainer.devices": 2}
    assert task_resources(two, RayCluster()) == {"num_cpus": 1.0, "num_gpus": 2.0}


def test_cluster_without_ray_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    args = ["ablate", "--config", str(tiny_grid(tmp_path)), "--preset", "tiny", "--out", str(tmp_path / "out")]
    assert cli.main(args + ["--cluster", "ray"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['mmrope ablate: error: --cluster ray needs Ray, which is not installed: pip install -e ".[cluster]" '
                   '(or pip install "ray[default]")']
    assert not (tmp_path / "out").exists()
    assert cli.main(args + ["--address", "auto"]) == 1
    assert capsys.readouterr().err.strip() == "mmrope ablate: error: --address is an option of --cluster ray"
    assert cli.main(args + ["--cluster", "ray", "--dry-run"]) == 0  # the commands need no Ray
    assert "each run a Ray task asking for 1 CPU and 0 GPU" in capsys.readouterr().err


def test_children_of_a_cluster_task_die_with_it_and_stop_on_request(tmp_path):
    """A task's worker and its trainer are started with DIE_WITH_PARENT: when the worker is killed (its node lost),
    the trainer it started dies too instead of training on beside the retried task. A stop asked through ``stop``
    reaches the child as a Ctrl-C."""
    pid_file = tmp_path / "grandchild.pid"
    grandchild = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = ("import sys; from pathlib import Path; from mmrope.ablation.processes import run_process\n"
              f"run_process([sys.executable, '-c', {grandchild!r}], Path({str(tmp_path / 'child.log')!r}))\n")
    env = {**os.environ, DIE_WITH_PARENT: "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-c", parent], env=env)
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    assert os.getsid(pid) == pid  # its own session, as every trainer: killing the parent's group would miss it
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)

    asked = threading.Event()
    threading.Timer(0.5, asked.set).start()
    child = "import signal, sys, time\nsignal.signal(signal.SIGINT, lambda s, f: sys.exit(128 + s))\ntime.sleep(30)\n"
    start = time.monotonic()
    assert run_process([sys.executable, "-c", child], tmp_path / "stop.log", stop=asked.is_set) == 128 + signal.SIGINT
    assert time.monotonic() - start < 20


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


# The real cluster.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session(sid: int) -> list[int]:
    """The live processes of session ``sid``: a node started with ``ray start`` in its own session, less the
    processes its tasks start in sessions of their own."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return found


def _mentioning(text: str) -> list[str]:
    """Live processes whose command line holds ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            if text in command and _alive(int(entry.name)):
                found.append(f"{entry.name}: {command}")
    return found


def _kill_node(node: subprocess.Popen) -> None:
    """Every process of the node at once, as a machine that loses power: stopped, then killed."""
    pids = _session(node.pid)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    node.wait(timeout=30)


class LocalRay:
    """A head (127.0.0.2, two CPUs) and a worker node (127.0.0.3, one CPU), each ``ray start --block`` in a session of
    its own, with this checkout on their PYTHONPATH; dashboards off. Three tasks run at once, and once the worker node
    is gone the head runs the last two together: a task is mostly two Python processes importing torch and Lightning,
    one core each."""

    def __init__(self, temp: Path, logs: Path):
        ray = Path(sys.executable).with_name("ray")
        self.command = [str(ray if ray.exists() else shutil.which("ray") or "ray"), "start", "--block",
                        "--num-gpus=0", "--object-store-memory=80000000", "--disable-usage-stats"]
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        self.logs, self.port = logs, _free_port()
        self.address = f"127.0.0.2:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        self.head = self._start("head", "--head", "--num-cpus=2", "--node-ip-address=127.0.0.2", f"--port={self.port}",
                                "--include-dashboard=false", f"--temp-dir={temp}",
                                f"--ray-client-server-port={_free_port()}")
        self.worker = self._start("worker", "--num-cpus=1", f"--address={self.address}", "--node-ip-address=127.0.0.3")

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.logs / f"{name}.log"
        ports = [f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
                 f"--runtime-env-agent-port={_free_port()}"]
        with open(log, "w") as f:
            node = subprocess.Popen([*self.command, *args, *ports], stdout=f, stderr=subprocess.STDOUT,
                                    env=self.env, start_new_session=True)
        self.nodes.append(node)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            if node.poll() is None:
                _kill_node(node)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """The two-node cluster, started once for this file's cluster tests and torn down with every process it ran."""
    if os.environ.get("MMROPE_REQUIRE_RAY") != "1":
        pytest.importorskip("ray", reason='the cluster tests need the cluster extra: pip install -e ".[cluster]"')
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    cluster = None
    try:
        cluster = LocalRay(temp, tmp_path_factory.mktemp("ray_logs"))
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
            sessions = [node.pid for node in cluster.nodes]
            deadline = time.monotonic() + 10
            while any(_session(s) for s in sessions) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not any(_session(s) for s in sessions), "a process of the test's Ray nodes outlived them"
        shutil.rmtree(temp, ignore_errors=True)


def _train_here(plan, encoder: str, scheme: str, seed: int, run_dir: Path, resume: bool = False) -> None:
    """One run's training in this process (a subprocess costs Lightning's import), with ``mmrope train``'s arguments."""
    from mmrope.train import cli as train

    with mock.patch.object(sys, "argv", sys.argv[:1]):  # LightningCLI would also read pytest's arguments
        assert train.main(plan_module.train_args(plan, encoder, scheme, seed, run_dir, resume)) == 0


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return sorted(csv.DictReader(f), key=lambda r: [r[k] for k in ("encoder", "scheme", "seed", "split", "size")])


def _logged_steps(run_dir: Path) -> list[list[int]]:
    """The steps with a training loss, per CSV log version."""
    versions = []
    for path in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        with open(path) as f:
            versions.append(sorted(int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")))
    return versions


@pytest.mark.cluster
def test_grid_on_two_nodes_equals_the_grid_here_though_a_node_dies(local_ray, tmp_path, capsys):
    """Four runs left at step 2 of 4, as an interrupted grid leaves them. Here: each resumed to step 4 and scored in
    this process. On the cluster, from a copy of the same folders: a task per run, the worker node killed (SIGKILL to
    all its processes at once) while the trainer of its run is starting. Ray runs that task again on the head, which
    resumes the run from its last.ckpt; the grid completes with the same results, each step trained once, every
    run scored once, and no process of the lost task left. Submitted again, the finished grid is only reported."""
    import torch

    grid = tiny_grid(tmp_path)
    here, there = tmp_path / "here", tmp_path / "there"
    runs = [(a.split("-")[0], a.split("-")[1], k) for a in ARMS for k in (0, 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each task's one CPU
    try:
        for encoder, scheme, seed in runs:
            _train_here(load_plan(grid, "tiny", max_steps=2), encoder, scheme, seed,
                        here / f"{encoder}-{scheme}" / f"seed{seed}")
        shutil.copytree(here, there)
        for encoder, scheme, seed in runs:
            _train_here(load_plan(grid, "tiny"), encoder, scheme, seed, here / f"{encoder}-{scheme}" / f"seed{seed}",
                        resume=True)
        args = ["ablate", "--config", str(grid), "--preset", "tiny"]
        assert cli.main(args + ["--out", str(here)]) == 0  # scores them
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()

    killed: list[Path] = []

    def kill_the_worker_node_mid_run() -> None:
        """Once a worker runs on the worker node and its trainer has started: the node goes down."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and local_ray.worker.poll() is None:
            node = set(_session(local_ray.worker.pid))
            for line in _mentioning("mmrope.ablation.worker"):
                pid = int(line.split(":")[0])
                command = line.split()
                if _parent(pid) in node and str(there) in line:
                    arm, seed = command[command.index("--arm") + 1], command[command.index("--seed") + 1]
                    run_dir = there / arm / f"seed{seed}"
                    if (run_dir / "train.log").exists():
                        killed.append(run_dir)
                        _kill_node(local_ray.worker)
                        return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_worker_node_mid_run, daemon=True)
    killer.start()
    start = time.monotonic()
    assert cli.main(args + ["--out", str(there), "--cluster", "ray", "--address", local_ray.address]) == 0
    seconds = time.monotonic() - start
    killer.join(timeout=5)
    err = capsys.readouterr().err
    assert killed, f"no run of the worker node was seen training: {err[-3000:]}"
    assert "[ray] 4 tasks, each asking for 1 CPU and 0 GPU, on 2 nodes (3 CPU, 0 GPU)" in err

    assert _rows(there / "results.csv") == _rows(here / "results.csv")
    for encoder, scheme, seed in runs:
        run_dir = f"{encoder}-{scheme}/seed{seed}"
        assert (there / run_dir / "predictions.csv").read_text() == (here / run_dir / "predictions.csv").read_text()
        assert _logged_steps(there / run_dir) == [[0, 1], [2, 3]], run_dir  # each step trained once
    lost = (killed[0] / "worker.log").read_text()
    assert [line for line in lost.splitlines() if line.startswith("# ray task")] == [
        "# ray task on node 127.0.0.3", "# ray task on node 127.0.0.2"]  # lost there, retried on the head
    assert lost.count("resuming at step 2 to 4 steps") == 2 and lost.count("scored in") == 1
    assert not _mentioning(str(there)), "a process of the lost task outlived its node"  # nor of any other task
    print(f"\ncluster grid: {seconds:.0f} s", file=sys.__stderr__)

    # the same command again: every run is done, so nothing is submitted and nothing touched; the results are rewritten
    markers = {path: path.stat().st_mtime_ns for path in there.glob("*/seed*/eval.json")}
    assert len(markers) == 4
    assert cli.main(args + ["--out", str(there), "--cluster", "ray", "--address", local_ray.address]) == 0
    assert "[ray]" not in capsys.readouterr().err
    assert {path: path.stat().st_mtime_ns for path in there.glob("*/seed*/eval.json")} == markers


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None


@pytest.mark.cluster
def test_failed_run_is_reported_once_and_a_grid_no_node_fits_is_refused(local_ray, tmp_path, capsys):
    """A run whose checkpoint is damaged fails in its task: reported by run with the worker's one line, not retried
    (one attempt in its log). A grid asking for a GPU the cluster lacks is one line, before any task."""
    grid = tiny_grid(tmp_path)
    out = tmp_path / "out"
    run_dir = out / ARMS[0] / "seed0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints/last.ckpt").write_bytes(os.urandom(4096))
    args = ["ablate", "--config", str(grid), "--preset", "tiny", "--arms", ARMS[0], "--seeds", "1", "--out", str(out),
            "--cluster", "ray", "--address", local_ray.address]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    listed = err[err.index("mmrope ablate: 1 of 1 runs failed (rerun to retry them):"):].splitlines()[1:]
    assert len(listed) == 1 and listed[0].startswith(f"  {ARMS[0]} seed 0: {run_dir / 'checkpoints/last.ckpt'}: "
                                                     "cannot be read as a PyTorch checkpoint"), listed
    assert (run_dir / "worker.log").read_text().count("# ray task on node") == 1

    assert cli.main(args + ["--gpus-per-task", "1"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"mmrope ablate: error: no node of the Ray cluster at {local_ray.address} has 1 CPU and 1 GPU for a task")
