"""pairing: sampled (on-policy) pairs are chosen and rejected by the judge from candidates of one neutral prompt."""

from __future__ import annotations

import polars as pl
import pytest

from prefsynth.build import BuildConfig, build
from prefsynth.generate import GenerateConfig, generation_key
from prefsynth.judge import JudgeConfig
from prefsynth.model import resolve_model
from prefsynth.pairing import sampled_pairs
from prefsynth.pipeline import plain_step
from prefsynth.prompts import NEUTRAL, PromptConfig, Templates
from prefsynth.rounds import generate_judged
from tiny_model import LOOSE_FILTERS

TITLES = ["Attention Is All You Need", "Deep Residual Learning for Image Recognition"]


@pytest.fixture(scope="module")
def templates():
    return Templates(PromptConfig())


def _candidates(rows: list[tuple[str, int, float, bool]]) -> pl.DataFrame:
    return pl.DataFrame({"title": [r[0] for r in rows], "candidate": [r[1] for r in rows],
                         "key": [f"{r[0]}-{r[1]}" for r in rows], "judge_negative": [r[2] for r in rows],
                         "bad": [r[3] for r in rows]})


def test_chosen_is_the_most_negative_valid_candidate_and_rejected_the_most_positive():
    df = _candidates([("a", 0, 0.60, False), ("a", 1, 0.95, True), ("a", 2, 0.10, False), ("a", 3, 0.80, False),
                      ("b", 0, 0.70, False), ("b", 1, 0.55, False),            # margin 0.15 < 0.3: no pair
                      ("c", 0, 0.99, False), ("c", 1, 0.01, True),             # one valid candidate: no pair
                      ("d", 0, float("nan"), False), ("d", 1, 0.2, False)])    # unjudged counts as missing
    rows, stats = sampled_pairs(df, "negative", 0.3)
    got = {(r["title"], r["polarity"]): r["key"] for r in rows.iter_rows(named=True)}
    assert got == {("a", "negative"): "a-3", ("a", "positive"): "a-2"}  # a-1 is more negative but invalid
    assert stats["titles_with_pair"] == 1 and stats["titles_margin_too_small"] == 1
    assert stats["titles_without_two_valid"] == 2 and stats["candidates_valid"] == 7
    # chosen = positive mirrors the choice
    rows, _ = sampled_pairs(df, "positive", 0.3)
    got = {(r["title"], r["polarity"]): r["key"] for r in rows.iter_rows(named=True)}
    assert got == {("a", "positive"): "a-2", ("a", "negative"): "a-3"}


def test_neutral_reviews_have_keys_of_their_own_without_the_opening(tiny_model, templates):
    model = resolve_model(str(tiny_model))
    with_opening, without = GenerateConfig(opening="The paper"), GenerateConfig(opening="")
    k = generation_key(model, templates, with_opening, TITLES[0], NEUTRAL)
    assert k == generation_key(model, templates, without, TITLES[0], NEUTRAL)  # the opening is never used
    assert k not in {generation_key(model, templates, with_opening, TITLES[0], p) for p in ("negative", "positive")}


def test_sampled_build_samples_from_the_dataset_prompt_and_pairs_by_judge(tiny_model, tmp_path, templates):
    gen = GenerateConfig(model=str(tiny_model), backend="transformers", max_tokens=12, candidates=2,
                         cache_dir=tmp_path / "cache")
    cfg = BuildConfig(**LOOSE_FILTERS, pairing="sampled", min_margin=0.0, validation_fraction=0.0)
    gens, judged = generate_judged(TITLES, templates, gen, JudgeConfig(lexicon=True, llm=False, head=False,
                                                                        skip_rejected=False), cfg, plain_step)
    assert set(gens.rows.get_column("polarity").to_list()) == {NEUTRAL}
    assert gens.rows.get_column("text").str.starts_with("The paper").sum() < gens.rows.height  # no opening forced
    assert gens.stats["reviews_per_round"][0] == 2 and gens.rows.height <= 2 * 2 * 2  # 2 x n rounds at most
    out = build(gens.rows, TITLES, templates, cfg, judged.scores)
    s = out.stats["sampled"]
    assert s["titles_with_pair"] + s["titles_without_two_valid"] + s["titles_margin_too_small"] == len(TITLES)
    pairs = out.frames["paired"]["train"]
    assert pairs.height == s["titles_with_pair"] and out.stats["dropped"]["no_pair"] == len(TITLES) - pairs.height
    for r in pairs.iter_rows(named=True):  # chosen judged at least as negative as rejected, both of this title
        assert r["chosen_judge_negative"] >= r["rejected_judge_negative"] and r["chosen_key"] != r["rejected_key"]
        assert r["prompt"][0]["content"] == templates.dataset(r["title"])


def test_sampled_pairing_without_the_judge_is_one_clear_error(tiny_model, tmp_path, templates):
    from prefsynth.errors import UserError

    gen = GenerateConfig(model=str(tiny_model), backend="transformers", max_tokens=4, cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="needs the polarity judge"):
        generate_judged(TITLES, templates, gen, JudgeConfig(enabled=False), BuildConfig(pairing="sampled"),
                        plain_step)
