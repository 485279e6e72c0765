"""The text judge: a TF-IDF ridge fitted on real ICLR reviews, scored in numpy; its place in the verdict and in
the card's name for the judge."""

from __future__ import annotations

import pytest

from prefsynth.judge import JudgeConfig, cascade, with_text
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
    assert parse_judge("head 04a4 + text 1b2c sure 0.4") == ("head+text sure 0.4", "04a4", "1b2c")


def test_where_the_text_judge_is_sure_it_decides_alone():
    assert cascade(0.1, 0.95, 0.5, 0.4) == 0.95  # sure: the head's disagreement does not count
    assert cascade(0.1, 0.8, 0.5, 0.4) == pytest.approx(0.45)  # not sure: averaged as before
    assert cascade(0.1, 0.95, 0.5, 0.5) == pytest.approx(0.525)  # 0.5: never sure


def test_the_judge_stage_sends_only_unsure_texts_to_the_engine(text, tiny_model, tmp_path):
    """The LLM pass is the judge's cost; a text the text judge is sure of never reaches the engine, and its verdict
    is the text judge's. With text_sure 0.5 every text is read by the LLM again."""
    import polars as pl

    from prefsynth.engines import get_backend
    from prefsynth.generate import GenerateConfig, Generations
    from prefsynth.judge import CONTENT_FREE, JudgeSetup, judge
    from prefsynth.model import resolve_model
    from prefsynth.prompts import PromptConfig, Templates

    unsure = "The paper studies graphs and reports results on two datasets."
    p = dict(zip("npu", text.p_negative([NEG, POS, unsure])))
    assert p["n"] > 0.9 and p["p"] < 0.1 and abs(p["u"] - 0.5) < 0.4, p
    model = resolve_model(str(tiny_model))
    rows = pl.DataFrame({"key": ["kn", "kp", "ku"], "text": [NEG, POS, unsure]})
    asked: list[int] = []

    def engine():
        backend = get_backend(model, GenerateConfig(model=str(tiny_model), backend="transformers"))
        label_logprobs = backend.label_logprobs

        def counting(prompts, ids):
            asked.append(len(prompts))
            return label_logprobs(prompts, ids)
        backend.label_logprobs = counting
        return backend

    setup = JudgeSetup(tmp_path / "cache", None, 0.0, engine, None, model)
    templates = Templates(PromptConfig())
    out = judge(Generations(rows, model), templates, JudgeConfig(), setup)
    scores = {r["key"]: r for r in out.scores.iter_rows(named=True)}
    assert out.stats["judged"] == 1 and out.stats["text_decided"] == 2 and out.stats["judge"].endswith(" sure 0.4")
    assert asked == [len(CONTENT_FREE), 1]  # the calibration probes, then the one unsure text
    assert scores["ku"]["judge_llm"] == scores["ku"]["judge_llm"]  # read by the LLM judge (not nan)
    for k in ("kn", "kp"):
        assert scores[k]["judge_llm"] != scores[k]["judge_llm"]  # nan: no LLM pass
        assert scores[k]["judge_negative"] == scores[k]["judge_text"]
    every = judge(Generations(rows, model), templates, JudgeConfig(text_sure=0.5), setup)
    assert every.stats["judged"] == 2 and every.stats["reused"] == 1 and "sure" not in every.stats["judge"]
    assert every.scores.get_column("judge_llm").is_nan().sum() == 0

