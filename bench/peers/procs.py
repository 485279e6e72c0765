"""Processes of the peer bench: the shared vLLM server and proxy, and each tool's job, timed, measured and killed.

Every process starts in a session of its own, so a tool's whole tree (distilabel forks one process per step) is
measured and SIGKILLed as one, and stopping the server never touches anything this bench did not start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)


def kill_group(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


def stop(p: subprocess.Popen | None, grace: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after `grace` seconds."""
    if p is None:
        return
    kill_group(p, signal.SIGTERM)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    kill_group(p, signal.SIGKILL)
    p.wait()


def wait_http(url: str, p: subprocess.Popen, timeout: float, log: Path) -> float:
    """Seconds until `url` answers 200; raises with the log's last lines if `p` exits or time runs out."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.time() - t0
        except OSError:
            pass
        if p.poll() is not None:
            raise RuntimeError(f"{' '.join(p.args[:3])} exited ({p.returncode}) before answering; "
                               f"last line of {log}: {last_error(log)}")
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s (log: {log})")


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (shared pages count once per process, as `ps` shows)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def last_error(log: Path, lines: int = 1) -> str:
    """The line of a log that says what went wrong: the last exception or error line, else the last line."""
    try:
        text = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    marks = ("Error", "Exception", "error:", "Traceback", "Killed")
    hits = [ln for ln in text if any(m in ln for m in marks) and not ln.startswith("File ")]
    picked = (hits or text)[-lines:]
    return " | ".join(" ".join(ln.split())[:400] for ln in picked) or "(empty log)"


@dataclass
class Ran:
    rc: int | None
    wall: float
    peak_rss: int
    killed_at: int | None = None  # reviews on disk when it was SIGKILLed (None: not killed)
    timed_out: bool = False
    stalled: float = 0.0  # seconds without progress after which it was killed as hung (0: it was not)


def run_job(argv: list[str], log: Path, env: dict[str, str], timeout: float, progress: Callable[[], int],
            kill_at: int | None = None, stall: float = 300.0, cwd: Path | None = None) -> Ran:
    """Run one job to its end, sampling its tree's RSS. SIGKILL it once `progress()` (reviews on disk) reaches
    `kill_at`, or when neither its log nor its progress moved for `stall` seconds (hung), or after `timeout`."""
    t0 = time.time()
    # wide lines: rich (distilabel, curator) wraps log records at 80 columns when not writing to a terminal
    p = spawn(argv, log, {"COLUMNS": "200", **env}, cwd)
    peak, killed_at, timed_out, stalled = 0, None, False, 0.0
    last_poll, seen, moved = 0.0, None, t0
    try:
        while p.poll() is None:
            now = time.time()
            if now - last_poll >= 0.25:  # polling costs CPU the tools need: four times a second
                last_poll = now
                peak = max(peak, tree_rss(p.pid))
                done = progress()
                state = (done, log.stat().st_size if log.exists() else 0)
                if state != seen:
                    seen, moved = state, now
                if kill_at is not None and done >= kill_at:
                    kill_group(p)
                    killed_at = done
                    break
                if now - moved > stall:
                    kill_group(p)
                    stalled = now - moved
                    break
            if now - t0 > timeout:
                kill_group(p)
                timed_out = True
                break
            time.sleep(0.05)
    except BaseException:  # Ctrl-C: the job goes with the bench
        kill_group(p)
        raise
    p.wait()
    kill_group(p)  # anything the tool left behind in its session (multiprocessing workers)
    return Ran(p.returncode, time.time() - t0, peak, killed_at, timed_out, round(stalled))


def why_failed(ran: Ran, log: Path, timeout: float) -> str:
    if ran.timed_out:
        return f"killed after the {timeout:.0f} s job timeout; last log line: {last_error(log)}"
    if ran.stalled:
        return f"hung: no progress and no log output for {ran.stalled:.0f} s, killed; last log line: {last_error(log)}"
    return f"exit {ran.rc}: {last_error(log)}"


class Background:
    """A long-lived helper (server, proxy) stopped on exit whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        p = spawn(argv, log, env)
        with self._lock:
            self.procs.append(p)
        return p

    def stop_all(self) -> None:
        with self._lock:
            procs, self.procs = self.procs[::-1], []
        for p in procs:
            stop(p)
