"""noise and quality: intervals that widen with a poorly measured judge, and figures only for the judge measured."""

from __future__ import annotations

import math

from prefsynth.noise import Accuracy, kept_precision, pair_noise, ppv, prevalence, wilson
from prefsynth.quality import noise_estimate


def test_wilson_matches_the_textbook_values():
    lo, hi = wilson(50, 100)
    assert math.isclose(lo, 0.4038, abs_tol=1e-4) and math.isclose(hi, 0.5962, abs_tol=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_a_perfect_judge_gives_the_observed_share_back():
    assert prevalence(0.7, 1.0, 1.0) == 0.7 and ppv(0.7, 1.0, 1.0) == 1.0


def test_kept_precision_accounts_for_judge_errors_and_its_measurement():
    good = Accuracy(0.95, 400, 0.95, 400)
    poor = Accuracy(0.95, 20, 0.95, 20)
    a, b = kept_precision(180, 200, good), kept_precision(180, 200, poor)
    assert 0.9 < a.value < 1.0 and a.low <= a.value <= a.high
    assert (b.high - b.low) > (a.high - a.low)  # the same judge, measured on fewer reviews: a wider interval
    n = pair_noise(a, a)
    assert math.isclose(n.value, 1 - a.value ** 2) and n.low <= n.value <= n.high


def test_noise_estimate_needs_a_measured_judge():
    stats = {"judged_sides": {"chosen_ok": 90, "chosen_total": 100, "rejected_ok": 95, "rejected_total": 100}}
    assert noise_estimate(stats, {}, "negative") == {}
    acc = {"generated": {"sensitivity": 0.97, "sensitivity_n": 140, "specificity": 0.99, "specificity_n": 150}}
    est = noise_estimate(stats, acc, "negative")
    assert est["measured_on"] == "generated" and 0 < est["pair_noise"]["value"] < 0.2
