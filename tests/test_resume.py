"""Crash-safe resume: the build is killed with SIGKILL at named points during generation, judging and writing;
a rerun reuses every review completed before the kill, generates nothing twice, leaves no corrupt file behind,
and ends with datasets byte-identical to an uninterrupted run.

Runs on the tiny model through the transformers backend, whose per-request seeds and length-bucketed batches make
a review independent of which other prompts share its batch (see TransformersBackend.PAD_BUCKET)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from prefsynth.cache import Store
from prefsynth.config import from_dict
from prefsynth.generate import GEN_SCHEMA
from prefsynth.judge import JUDGE_SCHEMA
from prefsynth.pipeline import PipelineConfig, run
from tiny_model import LOOSE_ARGS, LOOSE_FILTERS, ONE_CANDIDATE, JUDGE_ALL

N = 12  # titles -> 24 reviews, 24 judgements

ARGS = ["--n", str(N), "--generate.backend", "transformers", "--generate.max_tokens", "12",
        "--formats", "both", *LOOSE_ARGS]


def cfg_for(tiny_model, cache: Path, out: Path) -> PipelineConfig:
    return from_dict(PipelineConfig, {
        "collect": {"n": N},
        "generate": {**ONE_CANDIDATE, "model": str(tiny_model), "backend": "transformers", "max_tokens": 12,
                     "cache_dir": str(cache)},
        "build": {"out": str(out), "formats": "both", **LOOSE_FILTERS},
        "judge": JUDGE_ALL,
    })


def parquet_digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.parquet"))}


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    run(cfg_for(tiny_model, base / "cache", base / "out"))
    return parquet_digests(base / "out")


def killed_run(tiny_model, cache: Path, out: Path, point: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFSYNTH_KILL_AT": point}
    cmd = [sys.executable, "-m", "prefsynth", "build", "--model", str(tiny_model), "--cache", str(cache),
           "--out", str(out), *ARGS]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


# (kill point, reviews completed when it fires, judgements completed when it fires)
KILL_POINTS = [
    ("journal.add:1", 1, 0),             # the first review has just been journaled
    ("journal.add:9", 9, 0),             # mid-generation
    ("shard.before_rename:1", 24, 0),    # generation done, its shard half-way to disk
    ("journal.before_remove:1", 24, 0),  # shard renamed, journal not yet removed: the same rows twice on disk
    ("judge.scored:5", 24, 4),           # mid-judging: 4 scores journaled, the 5th in hand
    ("journal.add:30", 24, 6),           # mid-judging, counted in journaled rows
    ("write.before_swap:1", 24, 24),     # the new dataset folder is complete under its temporary name
    ("write.after_swap:1", 24, 24),      # the dataset is in place, the process dies before returning
]


@pytest.mark.parametrize(("point", "reviews_done", "scores_done"), KILL_POINTS, ids=[p[0] for p in KILL_POINTS])
def test_kill_and_resume(tiny_model, tmp_path, reference, point, reviews_done, scores_done):
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc = killed_run(tiny_model, cache, out, point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    # What survived the kill is exactly what was completed before it.
    gens = Store(cache, "generations", GEN_SCHEMA)
    judged = Store(cache, "judgements", JUDGE_SCHEMA)
    assert gens.load().height == reviews_done
    assert judged.load().height == scores_done
    # The output is either absent or complete (never half-written), and no temporary folder is read as output.
    if point != "write.after_swap:1":
        assert not out.exists()
    else:
        assert parquet_digests(out) == reference

    summary = run(cfg_for(tiny_model, cache, out))
    g = summary.stats["generate"]
    assert g["reused"] == reviews_done and g["generated"] == 2 * N - reviews_done  # nothing generated twice
    assert summary.stats["judge"]["reused"] == scores_done
    assert parquet_digests(out) == reference
    assert gens.quarantined == 0 and judged.quarantined == 0
    leftovers = [p.name for p in out.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []
    assert not list((cache / "generations").glob("journal-*"))  # compacted by the rerun


def test_torn_shard_after_a_crash_is_discarded_and_regenerated(tiny_model, tmp_path, reference):
    cache, out = tmp_path / "cache", tmp_path / "out"
    run(cfg_for(tiny_model, cache, out))
    shard = next((cache / "generations").glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:100])  # as a non-atomic file system could leave it
    for p in out.rglob("*.parquet"):
        p.unlink()
    (out / "prefsynth.json").unlink()
    summary = run(cfg_for(tiny_model, cache, out))
    assert summary.stats["generate"]["generated"] == 2 * N
    assert summary.stats["generate"]["quarantined_shards"] == 1
    assert parquet_digests(out) == reference
    assert (cache / "generations" / "quarantine" / shard.name).exists()


def test_second_build_on_the_same_output_is_refused_with_one_line(tiny_model, tmp_path):
    """Two builds at once: the second is refused by the lock with a clear message, the first is unharmed."""
    from prefsynth.errors import UserError
    from prefsynth.fsutil import FileLock

    cache, out = tmp_path / "cache", tmp_path / "out"
    with FileLock(cache / ".lock"):  # a build is running on this cache
        with pytest.raises(UserError, match="generation cache .* is in use by pid"):
            run(cfg_for(tiny_model, cache, out))
    with FileLock(out.parent / f".{out.name}.lock"):  # a build is writing this output
        with pytest.raises(UserError, match="output folder .* is in use"):
            run(cfg_for(tiny_model, cache, out))
    assert run(cfg_for(tiny_model, cache, out)).changed  # both locks released: it goes through


def test_stale_lock_of_a_killed_process_is_recovered(tiny_model, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from prefsynth.fsutil import FileLock; "
                               f"l = FileLock(__import__('pathlib').Path({str(cache / '.lock')!r})); l.__enter__(); "
                               "print('locked', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    assert (cache / ".lock").exists()  # the lock file is still there...
    assert run(cfg_for(tiny_model, cache, out)).changed  # ...but the kernel released the lock with its holder
