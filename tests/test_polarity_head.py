"""polarity_head: a logistic head that learns from labelled features, round-trips to disk and knows its model."""

from __future__ import annotations

import numpy as np

from prefsynth.judge_eval import accuracy
from prefsynth.polarity_head import PolarityHead, cross_validated_accuracy, fit_logistic, normalise


def _data(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    lp = rng.normal(-5, 1, size=(n, 6))
    lp[:, 0] += np.where(y, 3.0, -3.0)  # the first answer word is likelier for negative reviews
    lex = rng.normal(0, 1, size=(n, 3))
    return lp, lex, y


def test_logistic_fit_separates_separable_data():
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    w, b = fit_logistic(x, np.array([0.0, 0.0, 1.0, 1.0]), l2=0.1)
    assert w[0] > 0 and abs(b) < 1e-6


def test_normalise_is_a_log_softmax_over_the_answer_words():
    out = normalise(np.array([[0.0, 0.0], [-np.inf, 0.0]]))
    assert np.allclose(np.exp(out).sum(axis=1), 1.0) and out[1, 0] < -40


def test_head_learns_round_trips_and_checks_its_model(tmp_path):
    lp, lex, y = _data()
    head = PolarityHead.train(lp[:150], lex[:150], y[:150], list(range(6)), "model-a", "tmpl-a", 1.0, {"n": 150})
    p = head.predict(lp[150:], lex[150:])
    assert ((p > 0.5) == y[150:]).mean() > 0.9
    head.save(tmp_path / "h.json")
    again = PolarityHead.load(tmp_path / "h.json")
    assert np.allclose(again.predict(lp[150:], lex[150:]), p) and again.fingerprint == head.fingerprint
    assert again.fits("model-a", "tmpl-a") and not again.fits("model-b", "tmpl-a")
    assert PolarityHead.load(tmp_path / "missing.json") is None
    assert cross_validated_accuracy(lp, lex, y, 1.0) > 0.9


def test_accuracy_reports_interval_and_both_error_rates():
    a = accuracy([0.9, 0.8, 0.2, 0.6, 0.5, float("nan")], [True, True, False, False, True, True])
    assert a["n"] == 5 and a["accuracy"] == round(3.5 / 5, 4)  # 0.5 counts half; nan (judge off) not at all
    assert a["low"] < a["accuracy"] < a["high"]
    assert a["sensitivity"] == round(2 / 3, 4) and a["specificity"] == 0.5
