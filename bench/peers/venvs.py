"""One virtual environment per peer tool, built from PyPI by the bench and kept between runs.

Each peer's pins (pydantic, datasets, openai, litellm, ...) live in `.state/peers/venvs/<tool>` and never touch the
project's .venv. A venv is reused while its stamp file names the same requirement and interpreter; the stamp also
keeps how long the first build took, so every run can report it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

# The versions issue 16 compares against. distilabel's OpenAI extra brings the client OpenAILLM needs; distilabel
# 1.5.3 imports `requests` (distilabel/models/image_generation/openai.py) without declaring it, so importing any
# of its models fails with ModuleNotFoundError unless the venv gets it too; and Distiset.save_to_disk writes a
# dataset card that imports PIL (distilabel/distiset.py, _get_card), also undeclared: pillow.
PEERS: dict[str, list[str]] = {
    "distilabel": ["distilabel[openai]==1.5.3", "requests", "pillow"],
    "curator": ["bespokelabs-curator==0.1.31"],
}
STAMP = ".prefsynth-peer-stamp.json"


def python_for_venvs() -> str:
    """The interpreter the project's venv was made from (3.11 here): peers get the same Python."""
    return getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable


def ensure(tool: str, root: Path, log: Path) -> dict:
    """The venv of `tool` under `root`, built if missing or stale. Returns its stamp: python, requirement,
    build_seconds, built_at, version, and `fresh` (True when this call built it)."""
    if tool not in PEERS:
        raise SystemExit(f"error: unknown peer tool {tool!r} (known: {', '.join(PEERS)})")
    venv, spec, py = root / tool, " ".join(PEERS[tool]), python_for_venvs()
    stamp_path = venv / STAMP
    try:
        stamp = json.loads(stamp_path.read_text())
        if stamp.get("requirement") == spec and stamp.get("python") == py and (venv / "bin" / "python").exists():
            return {**stamp, "fresh": False}
    except (OSError, ValueError):
        pass
    shutil.rmtree(venv, ignore_errors=True)  # a half-built or stale venv is rebuilt from nothing
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as f:
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        for cmd in ([py, "-m", "venv", str(venv)], [*pip, *PEERS[tool]]):
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode:
                tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
                raise RuntimeError(f"pip could not build the {tool} venv ({spec}): {tail[0][:300]} (log: {log})")
    dist = PEERS[tool][0].split("[")[0].split("==")[0]
    version = subprocess.run([str(venv / "bin" / "python"), "-c",
                              f"import importlib.metadata as m; print(m.version({dist!r}))"],
                             capture_output=True, text=True).stdout.strip()
    stamp = {"tool": tool, "requirement": spec, "python": py, "version": version,
             "build_seconds": round(time.time() - t0, 1), "built_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    stamp_path.write_text(json.dumps(stamp, indent=2))
    return {**stamp, "fresh": True}


if __name__ == "__main__":  # build (or report) the venvs alone: python bench/peers/venvs.py [tool ...]
    here = Path(__file__).resolve().parents[2] / ".state" / "peers"
    for name in sys.argv[1:] or list(PEERS):
        s = ensure(name, here / "venvs", here / "logs" / f"venv-{name}.log")
        print(f"{name}: {s['requirement']} -> {s['version']}, first build {s['build_seconds']} s"
              + (" (built now)" if s["fresh"] else " (cached)"))
