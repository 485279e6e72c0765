"""Shared fixtures: an isolated environment per test session and a tiny model built once."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
pytest_plugins = ["prefect_server"]  # the session-wide Prefect server fixtures

# Keep every test off the network and out of the user's own caches. These must be set before huggingface_hub,
# datasets or prefect are imported anywhere, so they live at module import time.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="prefsynth-tests-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_HOME"] = str(_SESSION_TMP / "hf")
os.environ["HF_DATASETS_CACHE"] = str(_SESSION_TMP / "hf" / "datasets")
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_SESSION_TMP / "prefect" / "results")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

TITLES_FILE = ROOT / "data" / "titles.txt"
SHARED_TITLES = ROOT.parent / "shared" / "data" / "neurips2023_titles.txt"


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture(scope="session")
def tiny_model(session_tmp: Path) -> Path:
    from tiny_model import build_tiny_model

    path = session_tmp / "tiny-llama"
    if not (path / "model.safetensors").exists():
        build_tiny_model(path)
    return path


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    """The real SmolLM2-135M-Instruct folder that `make install` converts; integration tests need it."""
    from prefsynth.model import bundled_model_dir

    path = bundled_model_dir()
    if not (path / "config.json").exists():
        pytest.skip("bundled model not converted: run `make install`")
    return path


@pytest.fixture(scope="session", autouse=True)
def _close_engines():
    """Shut vLLM engines down while pytest's output streams are still open (their atexit hooks log)."""
    yield
    import logging

    from prefsynth.engines import close_backends

    close_backends()
    logging.getLogger("vllm").disabled = True


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """A function returning a loopback TCP port nobody listens on (call it for each server a test starts)."""
    return _free_port


@pytest.fixture
def hub_env(monkeypatch, tmp_path) -> str:
    """The online-Hub environment for one test: the suite runs with HF_HUB_OFFLINE=1 (above), this lifts it and sets
    HF_TOKEN to the loopback Hub's write token, with no token stored on this machine (or other token source) in
    reach. The endpoint is passed explicitly (huggingface_hub reads HF_ENDPOINT once, at import). Returns the token."""
    import huggingface_hub.constants as hf_constants
    from hub import WRITE_TOKEN

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    return WRITE_TOKEN


@pytest.fixture
def hub(hub_env):
    """A loopback Hub server (tests/hub) in the online-Hub environment; it accepts hub.WRITE_TOKEN (write) and
    hub.READ_TOKEN (read). `hub.endpoint` is its URL."""
    from hub import READ_TOKEN, WRITE_TOKEN, HubServer

    with HubServer(tokens={WRITE_TOKEN: "write", READ_TOKEN: "read"}) as server:
        yield server
