"""Child processes of an ablation: training runs and workers, one at a time or several at once, with Ctrl-C and
SIGTERM passed on to them.

Each child has its own session, so a terminal's Ctrl-C reaches it only through here, once: a trainer then saves its
``last.ckpt`` after the step in flight and exits with 128 + the signal (a second Ctrl-C stops it at once). After a
signal no new child starts. Its output is appended to its log, after a ``$ command`` line.

Under a cluster task (:mod:`mmrope.ablation.cluster`) the children are started with ``MMROPE_DIE_WITH_PARENT=1`` in
their environment, and are then killed when the process that started them dies (Linux), as are theirs: when a node's
Ray worker is lost, no trainer of it lives on to write into the run folder beside the retried task. There a stop is
asked for through ``stop``, a test polled between waits, rather than a signal.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

DIE_WITH_PARENT = "MMROPE_DIE_WITH_PARENT"  # "1" in a child's environment: it dies with the process that started it


def run_process(command: list[str], log: Path, env: dict | None = None, stop: Callable[[], bool] | None = None
                ) -> int:
    """Run ``command`` with its output appended to ``log`` -> its exit status, or 128 + signal if a Ctrl-C or
    SIGTERM was passed on to it."""
    codes, signum = run_processes([("run", command, log)], 1, lambda message: None, env, stop)
    return 128 + signum if signum else codes["run"]


def run_processes(jobs: list[tuple[str, list[str], Path]], at_once: int, say, env: dict | None = None,
                  stop: Callable[[], bool] | None = None) -> tuple[dict[str, int], int | None]:
    """Run ``jobs`` (name, command, log), at most ``at_once`` at a time -> (exit status by name, the signal passed
    on, if any). A job that exits non-zero after a signal was passed on counts as stopped by it (128 + signal);
    ``stop()`` turning true counts as a Ctrl-C."""
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    codes: dict[str, int] = {}
    forwarded: list[int] = []
    queue = list(jobs)

    def forward(signum: int) -> None:
        forwarded.append(signum)
        for proc, _ in running.values():
            proc.send_signal(signum)

    main = threading.current_thread() is threading.main_thread()
    fate = _die_with_parent() if (os.environ if env is None else env).get(DIE_WITH_PARENT) == "1" else None
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: forward(signum)) if main else None
    try:
        while queue or running:
            while queue and len(running) < at_once and not forwarded:
                name, command, log = queue.pop(0)
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "a", encoding="utf-8") as f:
                    f.write(f"$ {shlex.join(command)}\n")
                    f.flush()
                    proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                            env=env, preexec_fn=fate)
                running[name] = (proc, time.monotonic())
                say(f"{name}: started (log: {log})")
            try:
                _wait_a_little(running)
            except KeyboardInterrupt:
                forward(signal.SIGINT)
            if stop is not None and not forwarded and stop():
                forward(signal.SIGINT)
            for name, (proc, start) in list(running.items()):
                if proc.poll() is not None:
                    code = proc.returncode
                    codes[name] = 128 + forwarded[0] if forwarded and code != 0 else code
                    say(f"{name}: exited with status {code} after {time.monotonic() - start:.0f} s")
                    del running[name]
            if forwarded and not running:
                queue.clear()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    return codes, forwarded[0] if forwarded else None


def _die_with_parent() -> Callable[[], None] | None:
    """What a new child runs before its command: ask Linux to kill it when this process dies (``prctl``, as Ray
    starts its own processes), and exit if this process is already gone. None where there is no ``prctl``."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def in_child() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(128 + signal.SIGKILL)

    return in_child


def _wait_a_little(running: dict) -> None:
    """Until one child exits (at once for a single child) or 0.2 s pass."""
    if len(running) == 1:
        proc, _ = next(iter(running.values()))
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
    else:
        time.sleep(0.2)


def last_error(log: Path, mine: str | None = None) -> str:
    """What a child said last about its failure: its last line starting with ``mine`` (its error about one run, when
    several share a log), else its last line with "error" in it, else its last line, and where its log is."""
    if not log.exists():
        return "no log"
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    picked = [line for line in lines if mine and line.startswith(mine)] or \
        [line for line in lines if "error" in line.lower()] or lines or ["no output"]
    return picked[-1][:300] + f" (see {log})"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
