"""judge: label-token selection, calibration, and measured accuracy on reviews with known polarity."""

from __future__ import annotations

import math

import pytest

from prefsynth.judge import JudgeConfig, label_token_ids, lexicon_scores
from prefsynth.judge_eval import EVAL_SETS, by_kind, load_set


def load_eval_set() -> list[dict]:
    return load_set(EVAL_SETS["synthetic"])


def p_value_vs_chance(accuracy: float, n: int) -> float:
    """One-sided exact binomial tail: the chance a coin-flipping judge scores at least this well."""
    k = math.ceil(accuracy * n - 1e-9)
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def test_eval_set_is_balanced_and_has_hard_cases():
    rows = load_eval_set()
    assert len(rows) >= 60
    assert sum(r["label"] == "negative" for r in rows) * 2 == len(rows)
    kinds = [r["kind"] for r in rows]
    assert kinds.count("sarcastic") >= 10 and kinds.count("mixed") >= 10


def test_lexicon_reads_plain_reviews():
    neg, pos = lexicon_scores(["The evaluation is unconvincing and the method is trivial. Reject.",
                               "A rigorous, insightful paper with compelling results. Clear accept."])
    assert neg > 0.7 and pos < 0.3


def test_label_tokens_are_distinct_first_tokens(tiny_model):
    from transformers import AutoTokenizer

    neg, pos = label_token_ids(AutoTokenizer.from_pretrained(tiny_model))
    assert neg and pos and not set(neg) & set(pos)


def test_lexicon_judge_beats_chance_clearly():
    rows = load_eval_set()
    report = by_kind(rows, None, None, JudgeConfig())
    acc = report["accuracy"]["lexicon"]
    assert acc >= 0.6 and p_value_vs_chance(acc, len(rows)) < 0.02, report
    assert report["by_kind"]["lexicon"]["plain"] >= 0.9


@pytest.mark.integration
def test_combined_judge_on_bundled_model_beats_chance(bundled_model):
    """The LLM judge is the generating model (SmolLM2-135M): weak alone, so the test holds the combined judge to
    the same bar as the lexicon and records what the LLM judge alone achieves without asserting more than it
    earns."""
    from prefsynth.engines import get_backend
    from prefsynth.generate import GenerateConfig
    from prefsynth.model import resolve_model
    from prefsynth.prompts import PromptConfig, Templates

    rows = load_eval_set()
    backend = get_backend(resolve_model("bundled"), GenerateConfig(backend="transformers"))
    report = by_kind(rows, backend, Templates(PromptConfig()), JudgeConfig())
    acc = report["accuracy"]
    assert acc["combined"] >= 0.6 and p_value_vs_chance(acc["combined"], len(rows)) < 0.02, report
    assert acc["llm"] >= acc["llm_raw"]  # calibration removes the label prior, it must not make things worse
    assert report["undecided"]["llm"] == 0


def test_the_heads_answer_words_do_not_change_the_llm_judge(tiny_model):
    """One engine pass serves both judges; the extra answer words read for the head are not label mass."""
    from prefsynth.engines import get_backend
    from prefsynth.generate import GenerateConfig
    from prefsynth.judge import llm_scores, score_reviews
    from prefsynth.model import resolve_model
    from prefsynth.polarity_head import PolarityHead, answer_token_ids
    from prefsynth.prompts import PromptConfig, Templates

    templates = Templates(PromptConfig())
    backend = get_backend(resolve_model(str(tiny_model)), GenerateConfig(model=str(tiny_model), backend="transformers"))
    reviews = ["The method is weak and the evaluation unconvincing. Reject.", "A clear, convincing paper. Accept."]
    ids = answer_token_ids(backend.tokenizer)
    head = PolarityHead(ids, [0.0] * (len(ids) + 3), [1.0] * (len(ids) + 3), [0.0] * (len(ids) + 3), 0.0, "", "")
    plain = llm_scores(backend, templates, reviews)
    both = {i: llm for i, llm, *_ in score_reviews(backend, templates, reviews, JudgeConfig(), head)}
    assert all(math.isclose(both[i], plain[i], abs_tol=1e-6) for i in range(len(reviews))), (both, plain)
