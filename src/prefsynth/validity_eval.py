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
from prefsynth.errors import UserError
from prefsynth.fsutil import atomic_write_text
from prefsynth.noise import wilson
from prefsynth.prompts import PromptConfig, Templates
from prefsynth.quality import VALIDITY_MEASURED, sampling_key
from prefsynth.train.writer_config import WRITER_LABELS
from prefsynth.validity import REASONS, rules_version, validity_flags
from prefsynth.validity_scorer import ValidityScorer, checks_version, cross_validated, load

LABELS = ROOT / "tests" / "data" / "validity_labels.jsonl"
# Kept reviews of the writer and of the bundled model on titles the writer never saw (bench/writer.py); kept apart
# so that retraining the writer on LABELS cannot train on them.
WRITER_EVAL_LABELS = ROOT / "tests" / "data" / "writer_eval_labels.jsonl"
# Kept reviews of the writer on NeurIPS 2023 titles (../shared/data, never in data/titles.txt), read blind.
NEURIPS_EVAL_LABELS = ROOT / "tests" / "data" / "neurips_eval_labels.jsonl"
# The same for the second writer against the first, on NeurIPS titles no label file had: not a training file of
# `make writer` (which reproduces the shipped adapter), so they stay a test.
NEURIPS_TEST_LABELS = ROOT / "tests" / "data" / "neurips_test_labels.jsonl"
# Kept pairs of the second writer on fresh NeurIPS titles, with and without the validity scorer, read blind after
# the scorer was fitted: the test of the scorer (in no training file of the scorer; the DPO polish learns from it).
SCORER_TEST_LABELS = ROOT / "tests" / "data" / "scorer_test_labels.jsonl"
# Kept pairs of the SFT writer and of its first DPO polish on fresh NeurIPS titles, read blind after the polish was
# trained: its test (the second polish learns from it).
DPO_TEST_LABELS = ROOT / "tests" / "data" / "dpo_test_labels.jsonl"
# Kept pairs of the first polished writer with the plain opening and with four rotating ones on fresh NeurIPS titles,
# read blind: the test of rotating openings and a second test of that polish (the second polish learns from it).
OPENING_TEST_LABELS = ROOT / "tests" / "data" / "opening_test_labels.jsonl"
# Kept pairs of the second DPO polish (trained on the two files above too) on fresh NeurIPS titles, read blind: its
# test, in no training file.
DPO2_TEST_LABELS = ROOT / "tests" / "data" / "dpo2_test_labels.jsonl"
# Kept pairs of the second polish at T 0.5 and 0.3 on the titles of the file above (the temperature comparison, a dev
# set: not a test of anything shipped).
TEMPERATURE_LABELS = ROOT / "tests" / "data" / "temperature_labels.jsonl"
# Kept pairs of the second polish, whole and cut to their first two sentences (`generate.max_sentences`), on fresh
# NeurIPS titles, read blind: the test of the stop rule.
CUT_TEST_LABELS = ROOT / "tests" / "data" / "cut_test_labels.jsonl"
# Kept pairs of the shipped default (the cut on) on fresh NeurIPS titles, read blind: its confirmation test.
DEFAULT_TEST_LABELS = ROOT / "tests" / "data" / "default_test_labels.jsonl"
# A third DPO polish (trained on the files above too, measured and not shipped: docs/quality.md): side by side with
# the shipped second polish on fresh NeurIPS titles, then alone on two more draws, read blind with the model hidden.
POLISH3_TEST_LABELS = ROOT / "tests" / "data" / "polish3_test_labels.jsonl"
# The third polish at T 0.7 and 0.9 on one more fresh draw (a dev comparison), read blind with T hidden.
POLISH3_TEMPERATURE_LABELS = ROOT / "tests" / "data" / "polish3_temperature_labels.jsonl"
# The shipped default cut to its first sentence and to its first two, side by side on the titles of the file above
# (read blind with the cut hidden): the test of `generate.max_sentences 1` and a fifth draw of the default.
CUT1_LABELS = ROOT / "tests" / "data" / "cut1_labels.jsonl"
# The shipped default and the third polish at T 0.9 side by side on a sixth fresh draw, read blind with the model
# hidden; the wrong-paper rule for subjects the title does not support was written after reading it.
POLISH3_T09_LABELS = ROOT / "tests" / "data" / "polish3_t09_labels.jsonl"
# The same two on a seventh fresh draw, with that rule on, read blind: the rule's test; then the default alone on 240
# fresh titles (seed 19), the test of the rules written after the seventh draw.
RULES_TEST_LABELS = ROOT / "tests" / "data" / "rules_test_labels.jsonl"
# The default on 3 x 240 more fresh titles (seeds 20, 21 and 22, pooled), read blind: the test of the rules widened
# after seed 19.
RULES_TEST2_LABELS = ROOT / "tests" / "data" / "rules_test2_labels.jsonl"
# The default with the familiar-words preference on and off on 3 x 240 more fresh titles (seeds 23-25), every kept
# text of both read blind in one shuffled pass: the preference's test (bench/results/familiar_test_plan.md).
FAMILIAR_TEST_LABELS = ROOT / "tests" / "data" / "familiar_test_labels.jsonl"
# Not here: polish3_partner_labels.jsonl, candidates sampled only for prompts the writer had failed (DPO data of the
# third polish), not a sample of what a build keeps: they must not join the validity estimate of by_sampling.
ALL_LABELS = (LABELS, WRITER_EVAL_LABELS, NEURIPS_EVAL_LABELS, NEURIPS_TEST_LABELS, SCORER_TEST_LABELS,
              DPO_TEST_LABELS, OPENING_TEST_LABELS, DPO2_TEST_LABELS, TEMPERATURE_LABELS, CUT_TEST_LABELS,
              DEFAULT_TEST_LABELS, POLISH3_TEST_LABELS, POLISH3_TEMPERATURE_LABELS, CUT1_LABELS, POLISH3_T09_LABELS,
              RULES_TEST_LABELS, RULES_TEST2_LABELS, FAMILIAR_TEST_LABELS)
# What `validity-eval --train` fits the validity scorer on: every label file read before its test.
SCORER_LABELS = (*WRITER_LABELS, NEURIPS_TEST_LABELS)


def load_labels(*paths: Path) -> pl.DataFrame:
    rows = [json.loads(line) | {"file": Path(path).name} for path in (paths or ALL_LABELS) if Path(path).exists()
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


def _kept_counts(passed: pl.DataFrame, f: pl.DataFrame) -> dict:
    """Texts the checks keep, how many a reader found valid, per sampling setting too (as builds quote them)."""
    return {"rule_valid": passed.height, "rule_valid_truly_valid": int(passed.get_column("valid").sum()),
            "by_sampling": {
                key: {"labelled": int((f.get_column("sampling") == key).sum()), "rule_valid": g.height,
                      "rule_valid_truly_valid": int(g.get_column("valid").sum()),
                      # valid and read as the tone it was asked for (mixed and neutral texts are not)
                      "rule_valid_polarised": int((g.get_column("valid")
                                                   & (g.get_column("label") == g.get_column("polarity"))).sum())}
                for (key,), g in passed.group_by("sampling", maintain_order=True)}}


def evaluate(labels: pl.DataFrame, templates: Templates, max_p_invalid: float | None = None) -> dict:
    """The rules on every label; with a shipped scorer, the rules and the scorer at `max_p_invalid` (the build's
    default) on the labels of files the scorer was not fitted on (`with_scorer`)."""
    from prefsynth.build import BuildConfig

    f = validity_flags(labels, templates)
    invalid_truth = ~f.get_column("valid")
    report = {"labelled": f.height, "truly_invalid": int(invalid_truth.sum()),
              "overall": _pr(f.get_column("invalid"), invalid_truth), "reasons": {}}
    for r in REASONS:
        gold = f.get_column("reasons").list.contains(r)
        report["reasons"][r] = _pr(f.get_column(f"invalid_{r}"), gold) | {"labelled": int(gold.sum())}
    report |= _kept_counts(f.filter(~pl.col("invalid")), f)
    report["rules_version"] = rules_version(templates)
    threshold = BuildConfig().max_p_invalid if max_p_invalid is None else max_p_invalid
    scorer = load() if threshold < 1.0 else None
    if scorer is not None and "file" in f.columns:
        unseen = f.filter(~pl.col("file").is_in(scorer.trained.get("files", [])))
        if unseen.height:
            p = scorer.p_invalid(unseen.get_column("review").to_list())
            unseen = unseen.with_columns(pl.Series("_scored", p > threshold))
            rule_kept = unseen.filter(~pl.col("invalid"))
            report["with_scorer"] = {
                "rules_version": checks_version(report["rules_version"], threshold), "threshold": threshold,
                "labelled": unseen.height, "files": sorted(set(unseen.get_column("file").to_list())),
                # of the texts the rules keep: does the scorer find the ones a reader rejects?
                "scorer_on_rule_kept": _pr(rule_kept.get_column("_scored"), ~rule_kept.get_column("valid")),
                "rules_only": _kept_counts(rule_kept, unseen)["rule_valid_truly_valid"], "rules_only_kept":
                    rule_kept.height} | _kept_counts(rule_kept.filter(~pl.col("_scored")), unseen)
    return report


def train_scorer(paths: tuple[Path, ...] = SCORER_LABELS) -> tuple[ValidityScorer, list[str]]:
    """Fit the scorer on the labels of `paths` (each text once); the lines report its grouped cross-validation."""
    labels = load_labels(*paths).unique(["title", "review"], keep="first", maintain_order=True)
    texts, titles = labels.get_column("review").to_list(), labels.get_column("title").to_list()
    invalid = (~labels.get_column("valid")).to_numpy().astype(float)
    oof = cross_validated(texts, invalid, titles)
    out = [f"validity scorer: {len(texts)} labelled texts of {len(set(titles))} titles ({int(invalid.sum())} not "
           f"valid); cross-validated (5 folds by title), of the texts the rules keep:"]
    kept = ~validity_flags(labels, Templates(PromptConfig())).get_column("invalid").to_numpy()
    for t in (1.0, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1):
        k = kept & (oof <= t)
        out.append(f"  threshold {t:<4}: keeps {k.sum() / kept.sum():.0%}, valid {1 - invalid[k].mean():.1%}"
                   if k.any() else f"  threshold {t:<4}: keeps none")
    files = sorted({Path(p).name for p in paths})
    scorer = ValidityScorer.fit(texts, invalid, trained={"files": files, "invalid": int(invalid.sum())})
    return scorer, out


def familiar_file_before(held_out: str, path: Path | None = None) -> Path:
    """Write the familiar words counted from the label files read before the one named `held_out` (to `path`, or a
    temporary file): the counts builds used before those labels existed, for the benches that rerun its test
    (`--build.familiar_words`)."""
    import tempfile

    from prefsynth import familiar

    names = [p.name for p in ALL_LABELS]
    if Path(held_out).name not in names:
        raise UserError(f"{held_out}: not a label file of validity_eval.ALL_LABELS ({', '.join(names)})")
    before = ALL_LABELS[:names.index(Path(held_out).name)]
    path = path or Path(tempfile.mkdtemp(prefix="familiar-")) / "familiar_words.json"
    familiar.write(load_labels(*before).iter_rows(named=True), [p.name for p in before], path)
    return path


def familiar_check(held_out: Path = RULES_TEST2_LABELS) -> list[str]:
    """The familiar-words preference measured on one label file with the words counted from the files read before it
    (as the preference was designed): of the texts the rules keep, how many have an unfamiliar word, and how many of
    those and of the rest a reader rejected."""
    from prefsynth.familiar import FamiliarWords, count_papers

    others = load_labels(*ALL_LABELS[:ALL_LABELS.index(held_out)])
    known = FamiliarWords(count_papers(others.iter_rows(named=True)))
    test = load_labels(held_out)
    test = test.filter(~validity_flags(test, Templates(PromptConfig())).get_column("invalid"))
    odd = pl.Series([bool(known.unfamiliar(r, t)) for r, t in zip(test.get_column("review"), test.get_column("title"))])
    bad = ~test.get_column("valid")
    return [f"familiar words counted from the label files read before {held_out.name}, on it ({test.height} texts "
            f"the rules keep, {int(bad.sum())} not valid by reading):",
            f"  with an unfamiliar word {int(odd.sum())}, of which not valid {int((odd & bad).sum())}; "
            f"without one {int((~odd).sum())}, of which not valid {int((~odd & bad).sum())}"]


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
    if w := report.get("with_scorer"):
        m = w["scorer_on_rule_kept"]
        k, n = w["rule_valid_truly_valid"], w["rule_valid"]
        k0, n0 = w["rules_only"], w["rules_only_kept"]
        lo, hi = wilson(k, n)
        lo0, hi0 = wilson(k0, n0)
        out += [f"validity scorer at {w['threshold']} on {w['labelled']} labelled texts it was not fitted on "
                f"({', '.join(w['files'])}):",
                f"  on the texts the rules keep: precision {m['precision']}, recall {m['recall']} (tp {m['tp']}, "
                f"fp {m['fp']}, fn {m['fn']})",
                f"  valid by reading: rules alone {k0}/{n0} = {k0 / n0:.1%} [{lo0:.1%}, {hi0:.1%}]; rules and scorer "
                f"{k}/{n} = {k / n:.1%} [{lo:.1%}, {hi:.1%}]" if n and n0 else "  nothing kept"]
    return out


def write(report: dict) -> None:
    VALIDITY_MEASURED.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(VALIDITY_MEASURED, json.dumps(report, indent=1, sort_keys=True) + "\n")
