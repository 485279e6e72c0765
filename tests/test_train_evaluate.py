"""Train stage, evaluation (`prefsynth.train.evaluate`): the win rate and the sign test behind the verdict."""

from __future__ import annotations

from fractions import Fraction
from math import comb

from prefsynth.train import sign_test, summarize_evaluation, verdict


def exact_two_sided(wins: int, losses: int) -> float:
    """The two-sided exact binomial p at 1/2, summed over every outcome no likelier than the observed one (the
    definition scipy.stats.binomtest uses), in exact fractions."""
    n = wins + losses
    if n == 0:
        return 1.0
    p_obs = Fraction(comb(n, wins), 2 ** n)
    return float(min(1, sum(Fraction(comb(n, i), 2 ** n) for i in range(n + 1) if Fraction(comb(n, i), 2 ** n)
                            <= p_obs)))


def test_sign_test_is_the_exact_two_sided_binomial_test():
    assert sign_test(0, 0) == 1.0 and sign_test(5, 5) == 1.0
    assert sign_test(2, 8) == sign_test(8, 2) == 0.109375  # scipy.stats.binomtest(2, 10).pvalue
    assert sign_test(0, 5) == 0.0625
    for wins in range(0, 31):
        for losses in range(0, 31):
            assert abs(sign_test(wins, losses) - exact_two_sided(wins, losses)) < 1e-12, (wins, losses)


def test_summary_counts_ties_half_and_follows_the_chosen_polarity():
    titles = ["a", "b", "c", "d"]
    texts = {"base": ["one two", "x", "y", "z"], "tuned": ["one two three", "x", "y", "z"]}
    combined = {"base": [0.2, 0.5, 0.9, 0.4], "tuned": [0.8, 0.5, 0.1, 0.9]}
    scores = {m: {"combined": combined[m], "lexicon": combined[m]} for m in ("base", "tuned")}
    neg = summarize_evaluation(titles, texts, scores, "negative", 1.0)
    assert (neg["wins"], neg["losses"], neg["ties"], neg["win_rate"]) == (2, 1, 1, 0.625)
    assert neg["negativity_rate_base"] == 0.25 and neg["negativity_rate_tuned"] == 0.5
    assert neg["sign_test_p"] == 1.0 and neg["by_judge"]["lexicon"]["negativity_rate_tuned"] == 0.5
    assert neg["mean_words_tuned"] == 1.5 and len(neg["samples"]) == 4
    pos = summarize_evaluation(titles, texts, scores, "positive", 1.0)
    assert (pos["wins"], pos["losses"], pos["target"]) == (1, 2, "positive")
    assert verdict(neg).startswith("No clear effect at n=4 titles")
