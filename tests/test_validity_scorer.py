"""The validity scorer: TF-IDF logistic regression on hand labels, a build filter with its own reason, measured only
on labels it was not fitted on."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from prefsynth import quality, validity_eval, validity_scorer
from prefsynth.build import BuildConfig, flag_all
from prefsynth.generate import GEN_SCHEMA
from prefsynth.prompts import PromptConfig, Templates
from prefsynth.tfidf import Tfidf
from prefsynth.validity import rules_version
from prefsynth.validity_scorer import SCORED, ValidityScorer, checks_version, cross_validated, fold_of

VALID = ["The experiments use one small dataset and the baselines are outdated, so the gains are unconvincing.",
         "The method is clearly explained and the ablations isolate each component; the results are convincing.",
         "The theory section assumes convexity that the experiments never have, which undermines the claims.",
         "The evaluation covers three benchmarks and the improvements hold across them, a solid contribution."]
INVALID = ["The paper rejects the paper because the paper is rejected by the paper itself in the end.",
           "It has been proven effective in numerous applications and adopted by many institutions worldwide.",
           "The results are clear and unclear and the results are the results of the results again.",
           "It has been widely praised by experts and proven in numerous real-world applications."]


def _scorer() -> ValidityScorer:
    texts = VALID * 3 + INVALID * 3
    return ValidityScorer.fit(texts, np.array([0.0] * 12 + [1.0] * 12), ngram=1, min_df=1, l2=0.1,
                              trained={"files": ["train.jsonl"]})


def test_tfidf_rows_are_unit_length_and_unknown_words_weigh_nothing():
    tf = Tfidf.fit(VALID + INVALID, ngram=2, min_df=1)
    idx, v = tf.vector(VALID[0])
    assert len(idx) > 5 and np.linalg.norm(v) == pytest.approx(1.0)
    assert len(tf.vector("zzqx qqzx")[0]) == 0
    m = tf.matrix([VALID[0], "zzqx"])
    assert m[0, idx] == pytest.approx(v) and not m[1].any()
    assert "the experiments" in tf.terms  # bigrams counted


def test_it_learns_what_the_labels_say_and_survives_a_round_trip(tmp_path):
    s = _scorer()
    held_out = ["It has been proven in numerous applications and praised by experts.",
                "The baselines are outdated and the experiments use one small dataset."]
    bad, good = s.p_invalid(held_out)
    assert bad > 0.5 > good
    path = tmp_path / "scorer.json.gz"
    s.save(path)
    back = validity_scorer.load(path)
    assert back.fingerprint == s.fingerprint and back.p_invalid(held_out) == pytest.approx([bad, good], abs=1e-5)
    assert validity_scorer.load(tmp_path / "missing.json.gz") is None


def test_cross_validation_never_scores_a_text_with_a_model_that_saw_its_title():
    """A word only one title's texts have cannot help score that title out of fold."""
    texts = [t + " zzqmarker" for t in INVALID] + VALID * 2 + INVALID
    invalid = np.array([1.0] * 4 + [0.0] * 8 + [1.0] * 4)
    groups = ["marked"] * 4 + [f"t{i}" for i in range(12)]
    oof = cross_validated(texts, invalid, groups, folds=4, ngram=1, min_df=1, l2=0.1)
    seen = ValidityScorer.fit(texts, invalid, ngram=1, min_df=1, l2=0.1).p_invalid(texts[:4])
    k = fold_of("marked", 4)
    rest = [i for i, g in enumerate(groups) if fold_of(g, 4) != k]
    fold = ValidityScorer.fit([texts[i] for i in rest], invalid[rest], ngram=1, min_df=1, l2=0.1)
    assert "zzqmarker" not in fold.tfidf.terms
    assert oof[:4] == pytest.approx(fold.p_invalid(texts[:4]))  # scored by the fold model that never saw the title
    assert (oof[:4] < seen).all()


def _gens(texts: list[str]) -> pl.DataFrame:
    rows = [{"key": f"k{i}", "title": "Sparse Attention", "polarity": "negative", "text": t, "prompt_tokens": 100,
             "completion_tokens": 30, "finish_reason": "stop", "model": "m", "template_hash": "h", "backend": "test"}
            for i, t in enumerate(texts)]
    return pl.DataFrame(rows, schema={"key": pl.Utf8, **GEN_SCHEMA})


# Invalid by reading, passed by every rule: what the scorer is for.
RULES_MISS = "It has been proven effective in numerous applications and the results are the results again."


def test_a_build_drops_what_the_scorer_rejects_under_its_own_reason(monkeypatch):
    s = _scorer()
    monkeypatch.setattr(validity_scorer, "load", lambda path=None: s)
    templates = Templates(PromptConfig())
    texts = ["The attention pattern is tested on one small corpus, and the speed-ups are not measured end to end.",
             RULES_MISS]
    flagged = flag_all(_gens(texts), templates, BuildConfig(max_p_invalid=0.5))
    assert flagged.get_column(f"bad_{SCORED}").to_list() == [False, True]
    assert flagged.get_column("bad").to_list() == [False, True]
    off = flag_all(_gens(texts), templates, BuildConfig(max_p_invalid=1.0))
    assert f"bad_{SCORED}" not in off.columns and "p_invalid" not in off.columns
    flag = flag_all(_gens(texts), templates, BuildConfig(invalid="flag", max_p_invalid=0.5))
    assert flag.get_column("invalid").to_list() == [False, True] and f"bad_{SCORED}" not in flag.columns
    # the figures a build quotes belong to the rules and the scorer at this threshold
    rules = rules_version(templates)
    assert checks_version(rules, 1.0) == rules
    assert checks_version(rules, 0.15) != checks_version(rules, 0.2) != rules


def test_its_figures_come_only_from_label_files_it_was_not_fitted_on(tmp_path, monkeypatch):
    s = _scorer()
    monkeypatch.setattr(validity_eval, "load", lambda path=None: s)
    monkeypatch.setattr(validity_scorer, "load", lambda path=None: s)
    title = "Sparse Attention for Long Documents"
    for name, rows in (("train.jsonl", VALID + INVALID), ("test.jsonl", VALID[:2] + [RULES_MISS])):
        (tmp_path / name).write_text("".join(json.dumps(
            {"title": title, "polarity": "negative", "review": r, "valid": r in VALID, "label": "negative",
             "reasons": [] if r in VALID else ["incoherent"], "sampling": {"temperature": 0.7}}) + "\n" for r in rows))
    templates = Templates(PromptConfig())
    report = validity_eval.evaluate(validity_eval.load_labels(tmp_path / "train.jsonl", tmp_path / "test.jsonl"),
                                    templates, max_p_invalid=0.5)
    w = report["with_scorer"]
    assert w["files"] == ["test.jsonl"] and w["labelled"] == 3
    assert w["rules_only_kept"] == 3 and (w["rule_valid"], w["rule_valid_truly_valid"]) == (2, 2)
    assert w["scorer_on_rule_kept"]["tp"] == 1 and w["scorer_on_rule_kept"]["fp"] == 0
    assert any("not fitted on" in line for line in validity_eval.lines(report))
    # a build with the scorer on quotes this figure; with it off, the rules' own
    measured = tmp_path / "validity.json"
    monkeypatch.setattr(quality, "VALIDITY_MEASURED", measured)
    measured.write_text(json.dumps(report))
    assert quality.validity_estimate(checks_version(rules_version(templates), 0.5))["n"] == 2
    assert quality.validity_estimate(rules_version(templates))["n"] == report["rule_valid"]


def test_the_shipped_scorer_was_not_fitted_on_its_test():
    s = validity_scorer.load()
    assert s is not None, "data/judge/validity_scorer.json.gz is missing (make validity-eval ARGS=--train)"
    assert set(s.trained["files"]) == {p.name for p in validity_eval.SCORER_LABELS}
    assert validity_eval.SCORER_TEST_LABELS.name not in s.trained["files"]
    assert s.p_invalid([RULES_MISS])[0] > s.p_invalid([VALID[0]])[0]
