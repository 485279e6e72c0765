"""No token or credential reaches logs, Prefect results, the cache, the card or the outputs.

A sentinel token drives a real publish (the Prefect flow in-process, the loopback Hub server of tests/hub/,
which checks the protocol, not the real Hub); then every byte the run left behind is searched for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hub import HubServer
from tiny_model import LOOSE_ARGS

ROOT = Path(__file__).resolve().parents[1]
SENTINEL = "hf_SENTINELtokenDoNotLeak0123456789abcdef"


def _files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            try:
                if needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits


def test_sentinel_token_never_written_anywhere(tiny_model, tmp_path):
    prefect_home = tmp_path / "prefect"
    with HubServer(tokens={SENTINEL: "write"}) as hub:
        env = {**os.environ, "HF_TOKEN": SENTINEL, "HF_ENDPOINT": hub.endpoint, "PREFECT_HOME": str(prefect_home),
               "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(prefect_home / "results"),
               "PREFECT_LOGGING_LEVEL": "DEBUG", "HF_HUB_DISABLE_XET": "1"}
        env.pop("HF_HUB_OFFLINE", None)
        cmd = [sys.executable, str(ROOT / "flows" / "build_dataset.py"), "--model", str(tiny_model), "--n", "4",
               "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--generate.backend",
               "transformers", "--generate.max_tokens", "8", *LOOSE_ARGS,
               "--publish.repo_id", "tester/sentinel", "--publish.endpoint", hub.endpoint]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert hub.commit_count == 1  # the publish really happened with that token
        uploaded = b"".join(repo.read(e) for repo in hub.repos.values()
                            for c in repo.commits.values() for e in c.tree.values())
    assert SENTINEL not in proc.stdout and SENTINEL not in proc.stderr
    assert SENTINEL.encode() not in uploaded
    for root in (tmp_path / "out", tmp_path / "cache", prefect_home):
        assert root.exists() and _files_containing(root, SENTINEL.encode()) == []
