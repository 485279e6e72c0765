"""How right are the validity rules? Precision and recall against generated reviews labelled by reading them.

`tests/data/validity_labels.jsonl` (and `writer_eval_labels.jsonl`, the same fields) holds one generated review per
line: `title`, `polarity` (the instruction that
generated it), `review` (as the build cleans it), and a reader's verdict: `valid` (a review of this paper in its
reviewer's voice), `label` (its tone: negative, positive, mixed, neutral), `reasons` (what is wrong with it,
in the rules' vocabulary plus `incoherent` and `other`) and `sampling` (the settings it was sampled with: texts
sampled differently fail differently, so a build quotes the figure measured on texts sampled like its own);
`judge_selected` marks texts a judge already picked (kept pairs), which judge-eval leaves out of its `generated` set.
`make validity-eval` prints each rule's precision and recall and writes data/judge/validity.json, which builds quote
for the share of valid reviews among those kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from prefsynth.constants import ROOT
from prefsynth.fsutil import atomic_write_text
from prefsynth.noise import wilson
from prefsynth.prompts import Templates
from prefsynth.quality import VALIDITY_MEASURED, sampling_key
from prefsynth.validity import REASONS, rules_version, validity_flags

LABELS = ROOT / "tests" / "data" / "validity_labels.jsonl"
# Kept reviews of the writer and of the bundled model on titles the writer never saw (bench/writer.py); kept apart
# so that retraining the writer on LABELS cannot train on them.
WRITER_EVAL_LABELS = ROOT / "tests" / "data" / "writer_eval_labels.jsonl"
# Kept reviews of the writer on NeurIPS 2023 titles (../shared/data, never in data/titles.txt), read blind.
NEURIPS_EVAL_LABELS = ROOT / "tests" / "data" / "neurips_eval_labels.jsonl"
# The same for the second writer against the first, on NeurIPS titles no label file had: not a training file of
# `make writer` (which reproduces the shipped adapter), so they stay a test.
NEURIPS_TEST_LABELS = ROOT / "tests" / "data" / "neurips_test_labels.jsonl"
ALL_LABELS = (LABELS, WRITER_EVAL_LABELS, NEURIPS_EVAL_LABELS, NEURIPS_TEST_LABELS)


def load_labels(*paths: Path) -> pl.DataFrame:
    rows = [json.loads(line) for path in (paths or ALL_LABELS) if Path(path).exists()
            for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:
        r["sampling"] = sampling_key(r.get("sampling") or {})
    return pl.DataFrame(rows, schema_overrides={"reasons": pl.List(pl.Utf8)})


def labels_by_text(path: Path) -> dict[tuple[str, str], dict]:
    """The labels of one file by (title, review text): how the benches find the labels of the texts they kept."""
    path = Path(path)
    if not path.exists():
        return {}
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {(r["title"], r["review"]): r for r in rows}


def _pr(pred: pl.Series, gold: pl.Series) -> dict:
    tp = int((pred & gold).sum())
    fp = int((pred & ~gold).sum())
    fn = int((~pred & gold).sum())
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(tp / (tp + fp), 3) if tp + fp else None,
            "recall": round(tp / (tp + fn), 3) if tp + fn else None}


def evaluate(labels: pl.DataFrame, templates: Templates) -> dict:
    f = validity_flags(labels, templates)
    invalid_truth = ~f.get_column("valid")
    report = {"labelled": f.height, "truly_invalid": int(invalid_truth.sum()),
              "overall": _pr(f.get_column("invalid"), invalid_truth), "reasons": {}}
    for r in REASONS:
        gold = f.get_column("reasons").list.contains(r)
        report["reasons"][r] = _pr(f.get_column(f"invalid_{r}"), gold) | {"labelled": int(gold.sum())}
    passed = f.filter(~pl.col("invalid"))
    report["rule_valid"] = passed.height
    report["rule_valid_truly_valid"] = int(passed.get_column("valid").sum())
    report["by_sampling"] = {
        key: {"labelled": int((f.get_column("sampling") == key).sum()), "rule_valid": g.height,
              "rule_valid_truly_valid": int(g.get_column("valid").sum()),
              # valid and read as the tone it was asked for (mixed and neutral texts are not)
              "rule_valid_polarised": int((g.get_column("valid") & (g.get_column("label") == g.get_column("polarity")))
                                          .sum())}
        for (key,), g in passed.group_by("sampling", maintain_order=True)}
    report["rules_version"] = rules_version(templates)
    return report


def lines(report: dict) -> list[str]:
    o = report["overall"]
    k, n = report["rule_valid_truly_valid"], report["rule_valid"]
    lo, hi = wilson(k, n)
    out = [f"validity rules on {report['labelled']} hand-labelled generated reviews "
           f"({report['truly_invalid']} not valid by reading):",
           f"  any rule:       precision {o['precision']}, recall {o['recall']} (tp {o['tp']}, fp {o['fp']}, "
           f"fn {o['fn']})",
           f"  kept by the rules and valid by reading: {k}/{n} = {k / n:.1%} [{lo:.1%}, {hi:.1%}]" if n else
           "  the rules keep none of them"]
    for r, m in report["reasons"].items():
        out.append(f"  {r:17} precision {m['precision']}, recall {m['recall']} "
                   f"(labelled {m['labelled']}, flagged {m['tp'] + m['fp']})")
    for key, m in report.get("by_sampling", {}).items():
        k, n = m["rule_valid_truly_valid"], m["rule_valid"]
        lo, hi = wilson(k, n)
        p = m["rule_valid_polarised"]
        plo, phi = wilson(p, n)
        out.append(f"  sampled with {key}: kept by the rules and valid {k}/{n} = {k / n:.1%} [{lo:.1%}, {hi:.1%}], "
                   f"valid and of the asked tone {p}/{n} = {p / n:.1%} [{plo:.1%}, {phi:.1%}] "
                   f"(labelled {m['labelled']})")
    return out


def write(report: dict) -> None:
    VALIDITY_MEASURED.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(VALIDITY_MEASURED, json.dumps(report, indent=1, sort_keys=True) + "\n")
