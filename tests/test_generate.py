"""The generate stage: the resumable cache and what its keys cover (the engines: tests/engines/)."""

from __future__ import annotations

import polars as pl
import pytest

from prefsynth.generate import GenerateConfig, cut_sentences, generate
from prefsynth.prompts import PromptConfig, Templates

TITLES = ["Attention Is All You Need", "Deep Residual Learning for Image Recognition", "Adam: A Method for "
          "Stochastic Optimization"]


@pytest.fixture(scope="module")
def templates():
    return Templates(PromptConfig())


def _cfg(tiny_model, tmp_path, **kw) -> GenerateConfig:
    kw.setdefault("candidates", 1)  # one review per (title, polarity); candidates: tests/test_rounds.py
    kw.setdefault("max_tokens", 12)
    return GenerateConfig(model=str(tiny_model), backend="transformers", cache_dir=tmp_path / "cache", **kw)


def test_generate_then_rerun_generates_nothing(tiny_model, tmp_path, templates):
    cfg = _cfg(tiny_model, tmp_path)
    first = generate(TITLES, templates, cfg)
    assert first.stats["generated"] == 6 and first.stats["reused"] == 0
    assert first.rows.height == 6
    assert set(first.rows.get_column("polarity")) == {"negative", "positive"}
    assert all(0 < n <= 12 for n in first.rows.get_column("completion_tokens"))
    cache = tmp_path / "cache" / "generations"
    assert len(list(cache.glob("*.parquet"))) == 1 and not list(cache.glob("journal-*"))  # compacted on close
    again = generate(TITLES + ["A New Title"], templates, cfg)
    assert again.stats["reused"] == 6 and again.stats["generated"] == 2
    merged = again.rows.join(first.rows, on="key", suffix="_first")
    assert merged.height == 6 and (merged["text"] == merged["text_first"]).all()


def test_cache_key_covers_sampling_and_templates(tiny_model, tmp_path, templates):
    generate(TITLES[:1], templates, _cfg(tiny_model, tmp_path))
    hotter = generate(TITLES[:1], templates, _cfg(tiny_model, tmp_path, temperature=1.3))
    assert hotter.stats["generated"] == 2


def test_several_openings_rotate_over_titles_and_candidates(tiny_model, tmp_path, templates):
    from prefsynth.generate import generation_key, opening_for
    from prefsynth.model import resolve_model

    alts = ["The paper", "The authors", "This work"]
    cfg = _cfg(tiny_model, tmp_path, opening="|".join(alts), candidates=3)
    one = _cfg(tiny_model, tmp_path, opening="The paper", candidates=3)
    for title in TITLES:
        for pol in ("negative", "positive"):
            # each retry of a review starts differently; a single opening never changes
            assert sorted(opening_for(cfg, pol, title, c) for c in range(3)) == sorted(alts)
            assert {opening_for(one, pol, title, c) for c in range(3)} == {"The paper"}
    many = [f"Title {i}" for i in range(60)]
    assert {opening_for(cfg, "negative", t) for t in many} == set(alts)  # titles spread over the alternatives
    model = resolve_model(str(tiny_model))
    for c in range(3):  # where the rotation picks the single opening, the review is the same cached one
        same = opening_for(cfg, "positive", TITLES[0], c) == "The paper"
        assert (generation_key(model, templates, cfg, TITLES[0], "positive", c)
                == generation_key(model, templates, one, TITLES[0], "positive", c)) == same
    rows = generate(TITLES[:2], templates, cfg).rows
    assert rows.height == 12
    for r in rows.iter_rows(named=True):
        assert r["text"].startswith(opening_for(cfg, r["polarity"], r["title"], r["candidate"]))


def test_cut_sentences_keeps_a_prefix_under_a_key_of_its_own():
    rows = pl.DataFrame({"key": ["a", "b", "c"], "finish_reason": ["length", "stop", "length"],
                         "text": ["One is weak. Two, e.g. the baseline, is old.\nThree! Four",
                                  "Only one sentence.", "See Fig. 3 and 3.5 here. Then more. And"]})
    cut = cut_sentences(rows, 2)
    assert cut.get_column("text").to_list() == ["One is weak. Two, e.g. the baseline, is old.", "Only one sentence.",
                                                "See Fig. 3 and 3.5 here. Then more."]
    # a cut review ended where generation would have stopped; one that ran out of tokens before the cut still did
    assert cut.get_column("finish_reason").to_list() == ["stop", "stop", "stop"]
    assert cut_sentences(rows, 5).get_column("finish_reason").to_list() == ["length", "stop", "length"]
    assert not set(cut.get_column("key")) & set(rows.get_column("key"))  # never judged as the whole text
    assert cut_sentences(rows, 0).equals(rows)


def test_a_cut_review_is_the_start_of_the_whole_one(tiny_model, tmp_path, templates):
    whole = generate(TITLES, templates, _cfg(tiny_model, tmp_path, max_tokens=40))
    cut = generate(TITLES, templates, _cfg(tiny_model, tmp_path, max_tokens=40, max_sentences=1))
    assert cut.stats["generated"] == 0  # the same samples: the cut is made on the cached texts
    pairs = cut.rows.join(whole.rows, on=["title", "polarity"], suffix="_whole")
    assert pairs.height == 6
    assert all(w.startswith(c) for c, w in zip(pairs.get_column("text"), pairs.get_column("text_whole")))
