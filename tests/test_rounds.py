"""rounds: candidate k is sampled only for the reviews no earlier candidate got right, each under its own key."""

from __future__ import annotations

import polars as pl
import pytest

from prefsynth.build import BuildConfig, build
from prefsynth.generate import GenerateConfig, generate, generation_key
from prefsynth.judge import JudgeConfig
from prefsynth.model import resolve_model
from prefsynth.pipeline import plain_step
from prefsynth.prompts import PromptConfig, Templates
from prefsynth.rounds import generate_judged, round_rows, round_tokens

TITLES = ["Attention Is All You Need", "Deep Residual Learning for Image Recognition"]


@pytest.fixture(scope="module")
def templates():
    return Templates(PromptConfig())


def _gen(tiny_model, tmp_path, n: int) -> GenerateConfig:
    return GenerateConfig(model=str(tiny_model), backend="transformers", max_tokens=12, candidates=n,
                          cache_dir=tmp_path / "cache")


def test_candidates_have_their_own_keys_and_candidate_zero_keeps_the_old_key(tiny_model, templates):
    model = resolve_model(str(tiny_model))
    cfg = GenerateConfig(opening="")
    keys = {generation_key(model, templates, cfg, TITLES[0], "negative", c) for c in range(4)}
    assert len(keys) == 4
    assert generation_key(model, templates, cfg, TITLES[0], "negative") == \
        generation_key(model, templates, cfg, TITLES[0], "negative", 0)


def test_a_review_that_passes_gets_no_further_candidate(tiny_model, tmp_path, templates):
    everything_passes = BuildConfig(invalid="keep", inconsistent="keep", truncated="keep", min_chars=0,
                                    max_repeat=1.0, max_echo=1.0, near_duplicate=1.0, prefer_familiar=False)
    gens, judged = generate_judged(TITLES, templates, _gen(tiny_model, tmp_path, 4), JudgeConfig(enabled=False),
                                   everything_passes, plain_step)
    assert judged is None and gens.stats["reviews_per_round"][0] == 4
    # a duplicate text is the only thing that can fail here; without one, one round is all
    if gens.rows.get_column("text").is_duplicated().sum() == 0:
        assert gens.rows.height == 4 and gens.stats["reviews_per_round"] == [4]


def test_a_review_that_fails_gets_every_candidate_and_the_build_keeps_one(tiny_model, tmp_path, templates):
    never = BuildConfig(min_chars=10_000, validation_fraction=0.0)  # no text is long enough: every candidate fails
    gens, _ = generate_judged(TITLES, templates, _gen(tiny_model, tmp_path, 3), JudgeConfig(enabled=False), never,
                              plain_step)
    assert gens.stats["reviews_per_round"] == [4, 4, 4] and gens.rows.height == 12
    assert sorted(gens.rows.get_column("candidate").unique().to_list()) == [0, 1, 2]
    # the same reviews as generating all three candidates at once: one cache, keyed per candidate
    again = generate(TITLES, templates, _gen(tiny_model, tmp_path, 3))
    assert again.stats["generated"] == 0 and again.rows.height == 12
    loose = BuildConfig(invalid="keep", inconsistent="keep", truncated="keep", min_chars=0, max_repeat=1.0,
                        max_echo=1.0, near_duplicate=1.0, validation_fraction=0.0)
    out = build(gens.rows, TITLES, templates, loose)
    assert out.stats["candidates"] == 3 and out.stats["candidates_generated"] == 12
    assert out.frames["paired"]["train"].height == 2  # one pair per title, from the best candidates
    kept_keys = set(out.frames["paired"]["train"].get_column("chosen_key").to_list())
    assert kept_keys <= set(gens.rows.filter(pl.col("polarity") == "negative").get_column("key").to_list())


def test_round_rows_are_what_the_rounds_generate(tiny_model, tmp_path, templates):
    """Benches sample every candidate once and then pick, per n, what a build with n candidates would have made."""
    every = generate(TITLES, templates, _gen(tiny_model, tmp_path, 3))  # all 3 candidates of all 4 reviews
    assert every.rows.height == 12
    passes = BuildConfig(invalid="keep", inconsistent="keep", truncated="keep", min_chars=0, max_repeat=1.0,
                         max_echo=1.0, near_duplicate=1.0, validation_fraction=0.0, prefer_familiar=False)
    never = BuildConfig(min_chars=10_000, validation_fraction=0.0)
    for cfg in (passes, never):
        made, _ = generate_judged(TITLES, templates, _gen(tiny_model, tmp_path, 3), JudgeConfig(enabled=False), cfg,
                                  plain_step)
        picked = round_rows(every, None, templates, cfg, 3)
        assert sorted(picked.get_column("key").to_list()) == sorted(made.rows.get_column("key").to_list())
    assert round_rows(every, None, templates, never, 2).height == 8
    assert round_tokens(every, None, templates, never, 2) == \
        every.rows.filter(pl.col("candidate") < 2).get_column("completion_tokens").sum()
    if every.rows.get_column("text").is_duplicated().sum() == 0:  # a copy is the only thing that fails `passes`
        assert round_rows(every, None, templates, passes, 3).get_column("candidate").to_list() == [0, 0, 0, 0]


def test_a_later_round_never_makes_an_earlier_candidate_a_copy(templates):
    """Rounds stop sampling for a settled review, so its text must stay settled: when a new candidate of another
    title copies it, the new candidate is the copy, whichever title sorts first."""
    from prefsynth.filters import flag_generations
    from prefsynth.generate import GEN_SCHEMA

    text = "The evaluation is thin and the baselines are old, so the gains are hard to believe at all."
    rows = [{"key": f"{t}{c}", "title": t, "polarity": "negative", "candidate": c, "text": text,
             "prompt_tokens": 10, "completion_tokens": 20, "finish_reason": "stop", "model": "m",
             "template_hash": "h", "backend": "test"} for t, c in (("B later title", 0), ("A earlier title", 1))]
    flagged = flag_generations(pl.DataFrame(rows, schema={"key": pl.Utf8, "candidate": pl.Int64, **GEN_SCHEMA}),
                               templates, BuildConfig())
    bad = dict(zip(flagged.get_column("key"), flagged.get_column("bad_duplicate")))
    assert bad == {"B later title0": False, "A earlier title1": True}
