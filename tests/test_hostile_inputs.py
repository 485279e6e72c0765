"""Hostile and broken inputs, one matrix: every user-caused problem ends in ONE line on stderr and exit code 2,
never a traceback and never a partial output; a problem confined to one row skips that row and counts it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from prefsynth.collect import CollectConfig, collect
from prefsynth.constants import PROMPTS_DIR

ROOT = Path(__file__).resolve().parents[1]


def _file(tmp: Path, name: str, data: bytes) -> str:
    p = tmp / name
    p.write_bytes(data)
    return str(p)


def _prompts(tmp: Path, name: str, text: str) -> str:
    d = tmp / "prompts"
    shutil.copytree(PROMPTS_DIR, d)
    (d / name).write_text(text)
    return str(d)


def _no_weights(tmp: Path) -> str:
    d = tmp / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return str(d)


# id -> (function of tmp_path returning extra CLI args, expected substring of the one error line)
ERRORS = {
    "empty titles file": (lambda t: ["--titles", _file(t, "t.txt", b"")], "no usable titles"),
    "only blank lines": (lambda t: ["--titles", _file(t, "t.txt", b"\n  \n\t\n\r\n")], "no usable titles"),
    "only non-utf8 rows": (lambda t: ["--titles", _file(t, "t.txt", "Caf\xe9 Theory\n".encode("latin-1"))],
                           "no usable titles"),
    "a single 1 MB line": (lambda t: ["--titles", _file(t, "t.txt", b"x" * 1_000_000)], "no usable titles"),
    "titles file missing": (lambda t: ["--titles", str(t / "nope.txt")], "does not exist"),
    "titles path is a folder": (lambda t: ["--titles", str(t)], "is not a file"),
    "csv without the column": (lambda t: ["--titles", _file(t, "t.csv", b"name,year\nA,1\n")], "no column 'title'"),
    "jsonl with another column": (lambda t: ["--titles", _file(t, "t.jsonl", b'{"name": "A"}\n'), "--collect.column",
                                             "paper"], "no column 'paper'"),
    "broken jsonl": (lambda t: ["--titles", _file(t, "t.jsonl", b'{"title": "A"\n')], "cannot read titles file"),
    "N larger than titles": (lambda t: ["--titles", _file(t, "t.txt", b"A\nB\n"), "--n", "3"], "only 2 usable"),
    "N zero": (lambda t: ["--n", "0"], "positive"),
    "N negative": (lambda t: ["--n", "-3"], "positive"),
    "N not a number": (lambda t: ["--n", "many"], "n must be int"),
    "template missing variable": (lambda t: ["--prompts", _prompts(t, "negative.j2", "Write a review.")],
                                  "must use {{ title }}"),
    "template syntax error": (lambda t: ["--prompts", _prompts(t, "positive.j2", "{% if title %}{{ title }}")],
                              "positive.j2:1"),
    "unknown model name": (lambda t: ["--model", "no-such-org/no-such-model"], "not in the Hugging Face cache"),
    "model folder without weights": (lambda t: ["--model", _no_weights(t)], "has no weights"),
    "model path that is a file": (lambda t: ["--model", _file(t, "m.bin", b"0")], "is not a folder"),
    "output path is a file": (lambda t: ["--out", _file(t, "out", b"")], "exists and is not a folder"),
    "output path not writable": (lambda t: ["--out", "/proc/prefsynth-out"], "is not writable"),
    "bad choice": (lambda t: ["--formats", "triplets"], "invalid choice"),
    "bad float": (lambda t: ["--generate.temperature", "hot"], "temperature must be float"),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_user_errors_are_one_line(case, tmp_path, tiny_model):
    make_args, expected = ERRORS[case]
    out = tmp_path / "dataset"
    args = ["--out", str(out), "--model", str(tiny_model), "--generate.backend", "transformers", "--n", "2",
            "--cache", str(tmp_path / "cache")] + make_args(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "prefsynth", "build", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert not out.exists()  # nothing half-written


def test_flow_entry_point_also_ends_in_one_line(tmp_path):
    """`make paired` goes through Prefect: its logs may say the run failed, but no traceback reaches the user."""
    proc = subprocess.run([sys.executable, str(ROOT / "flows" / "build_dataset.py"), "--titles",
                           str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: titles file")


# Data problems in single rows: skipped, counted, the rest goes through.
def test_bom_and_crlf_just_work(tmp_path):
    p = _file(tmp_path, "t.txt", b"\xef\xbb\xbfFirst paper\r\nSecond paper\r\n")
    assert sorted(collect(CollectConfig(source=p, n=2)).titles) == ["First paper", "Second paper"]


def test_bad_rows_are_skipped_and_counted(tmp_path):
    data = b"Good one\nbad \xff byte\nnul \x00 byte\n" + b"y" * 1_000_000 + b"\nGood two\n\n"
    got = collect(CollectConfig(source=_file(tmp_path, "t.txt", data), n=2))
    assert sorted(got.titles) == ["Good one", "Good two"]
    assert got.stats["skipped_not_utf8"] == 1 and got.stats["skipped_nul"] == 1
    assert got.stats["skipped_too_long"] == 1 and got.stats["skipped_empty"] == 1


def test_100k_titles(tmp_path):
    p = tmp_path / "t.parquet"
    pl.DataFrame({"title": [f"Paper {i}" for i in range(100_000)]}).write_parquet(p)
    got = collect(CollectConfig(source=str(p), n=50))
    assert len(got.titles) == 50 and got.stats["unique"] == 100_000


def test_template_syntax_in_titles_stays_literal(tiny_model, tmp_path):
    from test_pipeline import tiny_cfg

    from prefsynth.pipeline import run

    titles = ["{{ 7*7 }} Is Not 49", "{% for x in range(9) %}Loop{% endfor %}", "Format {0} {title} %s"]
    cfg = tiny_cfg(tiny_model, tmp_path, n=3, validation_fraction=0.0)
    cfg.collect.source = _file(tmp_path, "t.txt", "\n".join(titles).encode())
    run(cfg)
    df = pl.read_parquet(tmp_path / "out" / "paired" / "train.parquet")
    assert sorted(df["title"]) == sorted(titles)
    for title, prompt in zip(df["title"], df["prompt"]):
        assert f'"{title}"' in prompt[0]["content"]
    assert not any("49" in p[0]["content"] and "Is Not" not in p[0]["content"] for p in df["prompt"])
