"""The grid on a Ray cluster (``mmrope ablate --cluster ray``): every run, or every arm's seeds with the stacked
engine, is a Ray task that runs the worker of parallel ablations (:mod:`mmrope.ablation.worker`) on whichever node
has the CPUs and GPUs it asks for. The worker trains (or resumes from ``last.ckpt``) and scores exactly as on one
machine, into the same folders, signatures, markers and per-scene predictions; the runner's pass then collects every
run's rows from its marker and writes the results here. Nothing about training or scoring is decided in this module.

Output goes to shared storage: ``--out`` must be a path every node sees (NFS, a parallel file system, or one disk for
nodes on one machine). A task whose node cannot see its run folder fails with one line saying so. Copying the
folders back from node-local disks is not supported: a task retried on another node must find the ``last.ckpt`` the
lost one wrote, which only storage both nodes see gives it.

Retries. A task whose worker process or node dies is run again, up to ``retries`` times (Ray's ``max_retries``); the
retry finds the run's folder as the lost task left it, so it resumes from ``last.ckpt``, only scores a run whose
training had finished, and skips a run already marked done: each run ends with one checkpoint at ``max_steps`` and
one marker. The processes a lost task started die with it (:data:`mmrope.ablation.processes.DIE_WITH_PARENT`), so
none writes beside the retry. A run that fails (training exits with an error, NaN, damaged files) is not retried: the
same inputs fail the same way. It is reported by run, as on one machine, the other tasks go on, and the same command
retries it. Ctrl-C or SIGTERM asks every running task to stop after its current step with ``last.ckpt`` saved,
through a file each task polls (``ray.cancel`` does not reliably interrupt a running task); a task not started yet
returns at once when it sees it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mmrope.ablation.parallel import worker_command
from mmrope.ablation.plan import Plan, arm_name, override_args
from mmrope.ablation.processes import DIE_WITH_PARENT, last_error, run_process
from mmrope.errors import one_line

INSTALL_HINT = 'pip install -e ".[cluster]" (or pip install "ray[default]")'


@dataclass
class RayCluster:
    """Where and how the tasks run: ``--address``, ``--cpus-per-task``, ``--gpus-per-task``, ``--max-retries``."""

    address: str = "auto"  # a cluster started with `ray start` on this machine (or RAY_ADDRESS); else HOST:PORT
    cpus: float | None = None  # per task; None: 1
    gpus: float | None = None  # per task; None: from the base config's trainer (task_resources)
    retries: int = 3  # runs of a task again after its worker or node died


Unit = tuple[str, str, int | None]  # (encoder, scheme, seed); seed None: the arm's seeds trained together


def task_resources(plan: Plan, cluster: RayCluster) -> dict[str, float]:
    """What each task asks Ray for -> ``{num_cpus, num_gpus}``. GPUs: ``trainer.devices`` of the run's config (base
    and train overrides) when its ``trainer.accelerator`` is gpu or cuda, else none; a preset's ``parallel: N``
    trains N arms side by side on one device, so each asks for 1/N of it. CPUs: one, the host side of a GPU run or
    one single-threaded CPU run (small models train faster as N one-thread runs than as one N-thread run)."""
    gpus = cluster.gpus
    if gpus is None:
        from mmrope.train.config_reader import read_config

        trainer = read_config(["--config", str(plan.base), *override_args(plan.train)]).get("trainer") or {}
        on_gpu = str(trainer.get("accelerator") or "auto").lower() in ("gpu", "cuda")  # auto: none asked for
        gpus = _device_count(trainer.get("devices", 1)) / plan.parallel if on_gpu else 0
    cpus = 1 if cluster.cpus is None else cluster.cpus
    if cpus < 0 or gpus < 0:
        raise ValueError(f"--cpus-per-task={cpus:g}, --gpus-per-task={gpus:g}: expected numbers >= 0")
    return {"num_cpus": float(cpus), "num_gpus": float(gpus)}


def _device_count(devices) -> int:
    """Lightning's ``trainer.devices`` as a count: 2, "2", [0, 1] or "0,1"; "auto" and -1 (every device there is)
    count as one, the most a task can be sure a node has."""
    if isinstance(devices, str):
        devices = int(devices) if devices.strip().isdigit() else [d for d in devices.split(",") if d.strip()]
        devices = 1 if devices == ["auto"] or devices == ["-1"] else devices
    if isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    return devices if isinstance(devices, int) and devices > 0 else 1


def import_ray():
    """Ray, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(f"--cluster ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def run_on_ray(plan: Plan, out: Path, device: str | None, cluster: RayCluster, todo: list[Unit]
               ) -> dict[tuple[str, str, int], str]:
    """Run each unit of ``todo`` as a Ray task, as many at once as the cluster has room for -> why each run that is
    still not done failed, by (encoder, scheme, seed). Raises :class:`~mmrope.ablation.runner.RunInterrupted`
    once a Ctrl-C or SIGTERM has stopped the tasks in flight."""
    import signal
    import threading

    ray = import_ray()
    out = out.resolve()
    resources = task_resources(plan, cluster)
    grid = Path(plan.grid).resolve()
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="warning")
    except ConnectionError as e:
        raise ValueError(f"cannot reach a Ray cluster at --address {cluster.address}: {one_line(e, 200)}"
                         " (start one with `ray start --head`, or give --address HOST:PORT)") from None
    stop_file = out / f".ray-stop-{os.getpid()}-{time.time_ns()}"
    stopped: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum)) if main else None
    try:
        _check_room(ray, resources, cluster.address)
        task = ray.remote(_task).options(**resources, max_retries=cluster.retries, retry_exceptions=False)
        pending = {}
        for unit in todo:
            encoder, scheme, seed = unit
            with_grid = worker_command(plan, encoder, scheme, out, device, seed)
            with_grid[with_grid.index("--grid") + 1] = str(grid)
            pending[task.remote(with_grid[1:], str(_log(out, unit)), _env(resources), str(stop_file))] = unit
        _say(f"{len(pending)} tasks, each asking for {resources['num_cpus']:g} CPU and {resources['num_gpus']:g} GPU, "
            f"on {_describe(ray)}")
        problems, started = {}, time.monotonic()
        while pending:
            try:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            except KeyboardInterrupt:
                if stop_file.exists():  # a second Ctrl-C: leave now; Ray ends the tasks, their processes with them
                    raise
                stopped.append(signal.SIGINT)
                ready = []
            if stopped and not stop_file.exists():  # a task not started yet returns at once when it sees the file
                _say("stopping: every running task saves its last.ckpt after its current step")
                stop_file.touch()
            for ref in ready:
                unit = pending.pop(ref)
                problems.update(_outcome(ray, ref, plan, out, unit, cluster, time.monotonic() - started))
        if stopped:
            from mmrope.ablation.runner import RunInterrupted

            raise RunInterrupted("the grid's tasks were stopped; their checkpoints are saved: run the same command "
                                 "again to resume")
        return problems
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        stop_file.unlink(missing_ok=True)
        ray.shutdown()


def _task(args: list[str], log: str, env: dict[str, str], stop_file: str) -> tuple[int | None, str]:
    """A Ray task: the worker for one unit, with this node's Python -> (its exit status, None if this node does not
    see the unit's folder; this node's address)."""
    import ray

    node = ray.util.get_node_ip_address()
    log_path = Path(log)
    if not log_path.parent.is_dir():  # the driver made every run folder before submitting
        return None, node
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(f"# ray task on node {node}\n")
    stop = Path(stop_file)
    if stop.exists():
        return 130, node
    return run_process([sys.executable, *args], log_path, {**os.environ, **env}, stop=stop.exists), node


def _outcome(ray, ref, plan: Plan, out: Path, unit: Unit, cluster: RayCluster, seconds: float
             ) -> dict[tuple[str, str, int], str]:
    """One finished task, said on stderr -> why its runs failed, if they did."""
    encoder, scheme, seed = unit
    arm = arm_name(encoder, scheme)
    name = arm + (f" seed {seed}" if seed is not None else "")
    seeds = plan.seeds if seed is None else [seed]
    log = _log(out, unit)
    try:
        code, node = ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # the task itself raised (not the worker's run): not retried
        reason = " ".join(str(e.cause if e.cause is not None else e).split())[:300]
        _say(f"{name}: failed: {reason}")
        return {(encoder, scheme, k): f"its task failed: {reason}" for k in seeds}
    except ray.exceptions.RayError as e:  # its worker or node died more often than it may be retried
        reason = one_line(e, 200)
        _say(f"{name}: lost: {reason}")
        return {(encoder, scheme, k): f"lost {cluster.retries + 1} times, its worker or node died "
                                      f"({type(e).__name__}: {reason}; log: {log})" for k in seeds}
    if code == 0:
        _say(f"{name}: done on {node} ({seconds:.0f} s into the grid)")
        return {}
    if code is None:
        reason = f"node {node} does not see {log.parent}: --out must be on storage every node sees"
        _say(f"{name}: failed: {reason}")
        return {(encoder, scheme, k): reason for k in seeds}
    if code >= 128:
        _say(f"{name}: stopped on {node}")
        return {(encoder, scheme, k): f"stopped on {node}: its last.ckpt is saved" for k in seeds}
    _say(f"{name}: failed on {node} (log: {log})")
    problems = {}
    for k in seeds:
        mine = f"{arm}: failed: " + (f"seed {k}: " if seed is None else "")
        problems[encoder, scheme, k] = last_error(log, mine).removeprefix(mine)
    return problems


def _check_room(ray, resources: dict[str, float], address: str) -> None:
    """Refuse a grid no live node has room for: Ray would keep its tasks waiting for ever."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= resources["num_cpus"] and r.get("GPU", 0) >= resources["num_gpus"] for r in nodes):
        have = ", ".join(f"{r.get('CPU', 0):g} CPU + {r.get('GPU', 0):g} GPU" for r in nodes) or "no live node"
        raise ValueError(f"no node of the Ray cluster at {address} has {resources['num_cpus']:g} CPU and "
                         f"{resources['num_gpus']:g} GPU for a task (nodes: {have}): set --cpus-per-task / "
                         "--gpus-per-task, or add nodes")


def _describe(ray) -> str:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    return (f"{len(nodes)} node{'s' if len(nodes) != 1 else ''} ({total.get('CPU', 0):g} CPU, "
            f"{total.get('GPU', 0):g} GPU)")


def _env(resources: dict[str, float]) -> dict[str, str]:
    """The worker's environment beside the node's: its processes die with the task, and use the CPUs it asked for."""
    threads = str(max(1, int(resources["num_cpus"])))
    return {DIE_WITH_PARENT: "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def _log(out: Path, unit: Unit) -> Path:
    """Where a unit's worker writes, as with ``parallel: N``: the run's folder, or the arm's for its seeds together."""
    encoder, scheme, seed = unit
    return out / arm_name(encoder, scheme) / (f"seed{seed}" if seed is not None else "") / "worker.log"


def _say(message: str) -> None:
    print(f"[ray] {message}", file=sys.stderr, flush=True)
