"""The text judge: a TF-IDF ridge fitted on real ICLR reviews, scored in numpy; its place in the verdict and in
the card's name for the judge."""

from __future__ import annotations

import pytest

from prefsynth.judge import JudgeConfig, with_text
from prefsynth.judge_eval import EVAL_SETS, load_set
from prefsynth.quality import parse_judge
from prefsynth.text_judge import TextJudge

NEG = ("The contribution is marginal and the experiments are unconvincing: the baselines are weak, the ablations are "
       "missing and several claims are not supported. I recommend rejection.")
POS = ("This is a well-written paper with a novel and elegant idea. The experiments are thorough and convincing, the "
       "results are strong, and I believe it will be of broad interest. I recommend acceptance.")


@pytest.fixture(scope="module")
def text():
    judge = TextJudge.load()
    assert judge is not None, "data/judge/text_judge.json.gz is missing (scripts/train_text_judge.py writes it)"
    return judge


def test_reads_plain_verdicts_and_its_probability_follows_its_score(text):
    neg, pos = text.p_negative([NEG, POS])
    assert neg > 0.5 > pos
    assert text.score(NEG) < 0 < text.score(POS)
    assert text.p_negative([""]) == text.p_negative(["zzqx qqzx"])  # no known word: the intercept alone


def test_it_beats_chance_on_real_test_reviews_it_never_saw(text):
    """The headline figure is `make judge-eval`'s; this only guards against a broken file or scorer."""
    rows = load_set(EVAL_SETS["real-test"])[:120]
    p = text.p_negative([r["review"] for r in rows])
    right = sum((x > 0.5) == (r["label"] == "negative") for x, r in zip(p, rows))
    assert right / len(rows) > 0.7


def test_the_verdict_averages_it_in_and_the_judge_name_says_so():
    assert with_text(0.9, 0.1, 0.5) == pytest.approx(0.5)
    assert with_text(0.9, 0.1, 0.0) == pytest.approx(0.9)
    assert JudgeConfig().text and JudgeConfig().text_weight == 0.5
    assert parse_judge("head 04a4a10f11fdefee + text 1b2c3d4e5f607182") == ("head+text", "04a4a10f11fdefee",
                                                                           "1b2c3d4e5f607182")
    assert parse_judge("llm+lexicon") == ("combined", None, None)
    assert parse_judge("lexicon + text ab") == ("lexicon+text", None, "ab")

