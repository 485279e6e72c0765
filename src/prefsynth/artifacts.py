"""What a Prefect run shows besides its logs: the texts of its artifacts, built here (no Prefect import), published
by the flows (`flows/build_dataset.py`, `flows/train.py`).

A build-dataset run gets a markdown artifact (rows per split, drops per reason, noise and validity figures, where
the dataset went) and a table artifact of sample pairs; a train run gets its report (verdict, evaluation, metrics).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from prefsynth.constants import SPLITS

SAMPLE_ROWS = 20
SAMPLE_CHARS = 300  # a table cell, not a page: the full text is in the dataset (and `prefsynth view`)


def artifact_key(*parts: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    import re

    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")[:100] or "prefsynth"


def build_markdown(summary, name: str) -> str:
    """The build's result for a reader: rows, drops, quality, destination."""
    s = summary.stats.get("build", {})
    lines = [f"# {name}: dataset v{summary.version}" + ("" if summary.changed else " (unchanged)"), "",
             "| config | " + " | ".join(SPLITS) + " |", "|---|" + "---|" * len(SPLITS)]
    for config, rows in summary.rows.items():
        lines.append(f"| {config} | " + " | ".join(str(rows.get(sp, 0)) for sp in SPLITS) + " |")
    lines += ["", f"Pairs generated {s.get('pairs_generated')}, kept {s.get('pairs_kept')}, "
              f"dropped {s.get('pairs_dropped')}.", ""]
    drops = {k: v for k, v in summary.dropped.items() if v}
    if drops:
        lines += ["| dropped by | pairs |", "|---|---|", *[f"| {k} | {v} |" for k, v in sorted(drops.items())], ""]
    if s.get("quality"):
        from prefsynth.quality import describe

        lines += [f"- {line}" for line in describe(s["quality"])] + [""]
    lines.append(f"Written to `{summary.out}`.")
    for p in summary.published:
        lines.append(f"Published to `{p['repo_id']}@{p['revision']}`" + (f" ({p['tag']})" if p.get("tag") else "")
                     + ("." if p.get("committed") else ", unchanged."))
    return "\n".join(lines) + "\n"


def _text(messages) -> str:
    """The content of a chat column (last message) or a plain string column."""
    if isinstance(messages, list):
        return str(messages[-1]["content"]) if messages else ""
    return str(messages or "")


def _cut(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS - 1] + "…"


def sample_rows(out: Path, n: int = SAMPLE_ROWS) -> list[dict]:
    """Up to `n` rows of the train split: pairs when the folder has them, else unpaired rows."""
    out = Path(out)
    for config in ("paired", "unpaired"):
        path = out / config / "train.parquet"
        if not path.exists():
            continue
        df = pl.read_parquet(path).head(n)
        rows = []
        for r in df.iter_rows(named=True):
            if config == "paired":
                rows.append({"title": r["title"], "chosen": _cut(_text(r["chosen"])),
                             "rejected": _cut(_text(r["rejected"])),
                             "chosen P(neg)": _score(r.get("chosen_judge_negative")),
                             "rejected P(neg)": _score(r.get("rejected_judge_negative"))})
            else:
                rows.append({"title": r["title"], "completion": _cut(_text(r["completion"])),
                             "label": "desirable" if r["label"] else "undesirable",
                             "P(neg)": _score(r.get("judge_negative"))})
        return rows
    return []


def _score(x) -> str:
    return "" if x is None or x != x else f"{x:.2f}"


def train_markdown(out: Path) -> str:
    """A training run's report (its output folder's README: verdict, evaluation table, metrics)."""
    readme = Path(out) / "README.md"
    return readme.read_text(encoding="utf-8") if readme.exists() else f"No report in `{out}`."
