"""A real Prefect server for the tests that need one: `scripts/serve.sh` on a free loopback port with its own
state folder, once per test session, stopped with `scripts/stop.sh` at the end (a pytest plugin of conftest)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Flow runs killed in the fan-out test are marked Crashed this long after their last heartbeat (90 s by default;
# heartbeats come every 30 s, Prefect's minimum).
ZOMBIE_SECONDS = 60


def pids(run_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in run_dir.glob("*.pid")}


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is not running.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


@pytest.fixture(scope="session")
def prefect_server(session_tmp, free_port):
    """`scripts/serve.sh` with a free port and its own state folder; only the cpu pool gets a worker, so a
    training run handed off by a build stays queued in the gpu pool. Everything started is stopped afterwards."""
    state = session_tmp / "state"
    port = free_port()
    env = {**os.environ, "PREFSYNTH_STATE": str(state), "PREFECT_PORT": str(port), "PREFSYNTH_WORKERS": "cpu",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFSYNTH_HOME": str(session_tmp / "home"),
           "PREFSYNTH_ZOMBIE_SECONDS": str(ZOMBIE_SECONDS)}
    env.pop("PREFECT_API_URL", None)
    url = f"http://127.0.0.1:{port}/api"
    t0 = time.time()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "serve.sh")], env=env, capture_output=True, text=True,
                          timeout=240)
    started = pids(state / "run")
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert set(started) == {"server", "worker-cpu"}, proc.stdout
        print(f"serve.sh: healthy in {time.time() - t0:.1f}s")
        yield {"url": url, "env": {**env, "PREFECT_API_URL": url}, "state": state, "serve_output": proc.stdout}
    finally:
        stop = subprocess.run(["bash", str(ROOT / "scripts" / "stop.sh")], env=env, capture_output=True,
                              text=True, timeout=120)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        time.sleep(0.5)
        left = {name: pid for name, pid in started.items() if running(pid)}
        assert not left, f"still running after stop.sh: {left}"
        assert not list((state / "run").glob("*.pid"))


@pytest.fixture
def api(prefect_server):
    """This process's Prefect client settings pointed at the session server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server["url"]}):
        yield prefect_server
