"""The three tools as the bench drives them: the command of one job, the reviews it has on disk so far (what the
crash round watches), and the dataset it wrote, read back as (split, prompt, chosen, rejected) texts.

Each job gets a folder with `out/` (the dataset) and `cache/` (the tool's own cache: prefsynth's generation cache,
distilabel's pipeline cache, curator's CURATOR_CACHE_DIR). Rerunning the same command in the same folder is each
tool's documented way to resume.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from job import PEER_SAMPLING

HERE = Path(__file__).resolve().parent
PY_PROJECT = Path(sys.executable)  # run.py runs in the project's .venv
# prefsynth doing the job the peers do: one candidate per review, no judge, no filter that could drop a pair.
LOOSE = ["--generate.candidates", "1", "--judge.enabled", "false", "--build.invalid", "keep",
         "--build.inconsistent", "keep", "--build.truncated", "keep", "--build.min_chars", "0",
         "--build.max_repeat", "1", "--build.max_echo", "1", "--build.near_duplicate", "1",
         "--build.keep_dropped", "false"]
PEER_FLAGS = [f"--generate.{k}={','.join(v) if isinstance(v, list) else v}" for k, v in PEER_SAMPLING.items()]
DISTILABEL_TASKS = ("negative_review", "positive_review")  # the step names distilabel_job.py gives its two tasks


@dataclass
class Setup:
    job: Path  # the job file (job.py)
    proxy: str  # http://127.0.0.1:PORT, where every tool sends its requests
    n: int
    max_tokens: int
    titles: str | None
    venvs: Path
    distilabel_batch: int
    curator_concurrency: int


def _lines(paths) -> int:
    total = 0
    for p in paths:
        try:
            total += p.read_bytes().count(b"\n")
        except OSError:
            pass  # compacted or renamed between the listing and the read
    return total


class Tool:
    name = ""
    endpoint = ""  # how its prompts reach the server, for the table

    def argv(self, s: Setup, run: Path) -> list[str]:
        raise NotImplementedError

    def env(self, s: Setup, run: Path) -> dict[str, str]:
        return {}

    def done_on_disk(self, run: Path) -> int:
        """Reviews this job has already persisted where its resume would find them."""
        raise NotImplementedError


class Prefsynth(Tool):
    name, endpoint = "prefsynth", "/v1/completions, templated text"

    def argv(self, s: Setup, run: Path) -> list[str]:
        titles = ["--titles", s.titles] if s.titles else []
        return [str(PY_PROJECT.parent / "prefsynth"), "build", "--engine", s.proxy, "--n", str(s.n), *titles,
                "--out", str(run / "out"), "--cache", str(run / "cache"), "--generate.max_tokens",
                str(s.max_tokens), *LOOSE, *PEER_FLAGS]

    def done_on_disk(self, run: Path) -> int:
        # rows in the journal of the running writer; a shard appears only once the writer closed (all done)
        gen = run / "cache" / "generations"
        shards = 0
        if any(gen.glob("*.parquet")):
            import polars as pl

            shards = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in gen.glob("*.parquet"))
        return _lines(gen.glob("journal-*.jsonl")) + shards


class Distilabel(Tool):
    name, endpoint = "distilabel", "/v1/completions, templated text"

    def argv(self, s: Setup, run: Path) -> list[str]:
        return [str(s.venvs / "distilabel" / "bin" / "python"), str(HERE / "distilabel_job.py"), str(s.job),
                str(run / "out"), str(run / "cache"), str(s.distilabel_batch)]

    def env(self, s: Setup, run: Path) -> dict[str, str]:
        return {"HF_DATASETS_CACHE": str(run / "cache" / "hf")}

    def __init__(self) -> None:
        self._rows: dict[Path, tuple[int, int, int]] = {}  # batch file -> (size, mtime, rows): parsed once

    def done_on_disk(self, run: Path) -> int:
        # every output batch a step hands back is written to steps_data/<step signature>/batch_<n>.json
        rows = 0
        for f in run.glob("cache/*/steps_data/*/batch_*.json"):
            if not f.parent.name.startswith(DISTILABEL_TASKS):
                continue
            try:
                st = f.stat()
                seen = self._rows.get(f)
                if seen is None or seen[:2] != (st.st_size, st.st_mtime_ns):
                    n = sum(len(part) for part in json.loads(f.read_bytes())["data"])
                    self._rows[f] = seen = (st.st_size, st.st_mtime_ns, n)
                rows += seen[2]
            except (OSError, ValueError, KeyError):
                pass  # being written
        return rows


class Curator(Tool):
    name, endpoint = "curator", "/v1/chat/completions, messages"

    def argv(self, s: Setup, run: Path) -> list[str]:
        return [str(s.venvs / "curator" / "bin" / "python"), str(HERE / "curator_job.py"), str(s.job),
                str(run / "out"), str(s.curator_concurrency)]

    def env(self, s: Setup, run: Path) -> dict[str, str]:
        return {"CURATOR_CACHE_DIR": str(run / "cache"), "HF_DATASETS_CACHE": str(run / "cache" / "hf")}

    def done_on_disk(self, run: Path) -> int:
        # one line per finished request, appended to <cache>/<run hash>/responses_<n>.jsonl as it finishes
        return _lines(run.glob("cache/*/responses_*.jsonl"))


TOOLS: dict[str, Tool] = {t.name: t for t in (Prefsynth(), Distilabel(), Curator())}


def _text(value) -> str | None:
    """A review or prompt as plain text: chat messages (TRL's conversational form) give their last message."""
    if isinstance(value, list):
        value = value[-1]["content"] if value else None
    if value is None:
        return None
    return " ".join(str(value).split()) or None


def read_pairs(out: Path) -> list[tuple[str, str | None, str | None, str | None]]:
    """(split, prompt, chosen, rejected) of every pair in a dataset folder: parquet files named by split
    (prefsynth's paired/<split>.parquet) or `datasets` folders <split>/data-*.arrow (save_to_disk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for f in sorted([*out.rglob("*.parquet"), *out.rglob("*.arrow")]):
        if "dropped" in f.parts:
            continue
        if f.suffix == ".parquet":
            split, table = f.stem, pq.read_table(f)
        else:
            with pa.memory_map(str(f)) as src:
                split, table = f.parent.name, pa.ipc.open_stream(src).read_all()
        for r in table.select(["prompt", "chosen", "rejected"]).to_pylist():
            rows.append((split, _text(r["prompt"]), _text(r["chosen"]), _text(r["rejected"])))
    return rows
