"""familiar: a passing candidate with a word neither its title nor accepted reviews use gets another candidate."""

from __future__ import annotations

import json

import polars as pl
import pytest

from prefsynth import familiar
from prefsynth.build import BuildConfig, best_candidates, with_familiarity
from prefsynth.familiar import FamiliarWords, count_papers
from prefsynth.generate import GEN_SCHEMA, Generations
from prefsynth.prompts import PromptConfig, Templates
from prefsynth.rounds import settled
from prefsynth.validity_eval import ALL_LABELS, load_labels

TITLE = "Revisit the Power of Vanilla Knowledge Distillation"
PLAIN = "The paper's methodology appears to be overly simplistic and lacks depth."
ODD = "The paper offers new approaches to this ancient and timeless technique."


def test_words_count_once_per_paper_from_accepted_reviews_only():
    rows = [{"title": "A", "review": "Clear and novel, novel.", "valid": True},
            {"title": "A", "review": "Novel again.", "valid": True},
            {"title": "B", "review": "Novel and ancient.", "valid": True},
            {"title": "C", "review": "Timeless nonsense.", "valid": False},
            {"title": "Ancient Greek Parsing", "review": "Ancient texts, novel parser.", "valid": True}]
    papers = count_papers(rows)
    assert papers["novel"] == 3  # A twice counts once
    assert papers["ancient"] == 1  # its own title's word does not count for that paper
    assert "timeless" not in papers and "and" in papers  # a rejected review counts nothing
    known = FamiliarWords(papers, min_titles=2)
    assert known.unfamiliar("A novel parser, clear.", "X") == ["clear", "parser"]
    assert known.unfamiliar("A novel parser.", "Parsers for X") == []  # licensed by the title's first five letters
    assert known.unfamiliar("It is ok.", "X") == []  # words under three letters are never counted


def test_shipped_words_are_the_labels_counted():
    """data/judge/familiar_words.json is what `prefsynth validity-eval --familiar` counts from the label files."""
    shipped = json.loads(familiar.FAMILIAR_FILE.read_text(encoding="utf-8"))
    assert shipped["min_titles"] == familiar.MIN_TITLES
    assert shipped["from_files"] == sorted(p.name for p in ALL_LABELS)
    assert shipped["papers"] == count_papers(load_labels().iter_rows(named=True))
    known = familiar.load()
    assert known.unfamiliar(PLAIN, TITLE) == []
    assert known.unfamiliar(ODD, TITLE) == ["ancient", "timeless"]


def test_columns_are_flagged_as_text_by_text():
    """The build's vectorised check agrees with the per-text one on every labelled text (and on empty ones)."""
    labels = load_labels()
    known = familiar.load()
    reviews = pl.concat([labels.get_column("review"), pl.Series(["", "It is ok."])])
    titles = pl.concat([labels.get_column("title"), pl.Series(["X", "Y"])])
    expected = [bool(known.unfamiliar(r, t)) for r, t in zip(reviews, titles)]
    assert known.any_unfamiliar(reviews, titles).to_list() == expected
    assert 0 < sum(expected) < len(expected)


def _flagged(rows: list[tuple[int, bool, bool, float]]) -> pl.DataFrame:
    """(candidate, bad, unfamiliar, judge_negative) of one negative review."""
    return pl.DataFrame([{"title": "t", "polarity": "negative", "key": f"k{c}", "candidate": c, "bad": bad,
                          "unfamiliar": odd, "judge_negative": j} for c, bad, odd, j in rows])


def test_the_build_prefers_a_passing_candidate_without_unfamiliar_words():
    best, stats = best_candidates(_flagged([(0, False, True, 0.99), (1, True, False, 0.9), (2, False, False, 0.7)]))
    assert best.get_column("key").to_list() == ["k2"] and stats["kept_with_unfamiliar_words"] == 0
    # none passes without one: the unfamiliar one is kept, not dropped
    best, stats = best_candidates(_flagged([(0, False, True, 0.99), (1, True, False, 0.9)]))
    assert best.get_column("key").to_list() == ["k0"] and stats["kept_with_unfamiliar_words"] == 1
    # ...nor does it outrank the judge: one judged of the other tone loses to an unfamiliar one judged right
    best, _ = best_candidates(_flagged([(0, False, False, 0.2), (1, False, True, 0.8)]))
    assert best.get_column("key").to_list() == ["k1"]


@pytest.mark.parametrize("prefer", [True, False])
def test_an_unfamiliar_passing_candidate_does_not_settle_its_review(prefer):
    templates = Templates(PromptConfig())
    rows = [{"key": f"{pol}", "title": TITLE, "polarity": pol, "text": text, "prompt_tokens": 100,
             "completion_tokens": 20, "finish_reason": "stop", "model": "m", "template_hash": "h", "backend": "test"}
            for pol, text in (("negative", PLAIN), ("positive", ODD))]
    gens = Generations(pl.DataFrame(rows, schema={"key": pl.Utf8, **GEN_SCHEMA}), "m")
    cfg = BuildConfig(inconsistent="keep", prefer_familiar=prefer)
    flagged = with_familiarity(pl.DataFrame({"title": [TITLE, TITLE], "review": [PLAIN, ODD]}), cfg)
    assert flagged.get_column("unfamiliar").to_list() == [False, prefer]
    expected = {(TITLE, "negative")} | (set() if prefer else {(TITLE, "positive")})
    assert settled(gens, None, templates, cfg) == expected


def test_a_bad_words_file_is_one_clear_error_and_the_build_records_which_words_it_used(tmp_path):
    from test_build import gens, titles

    from prefsynth.build import build
    from prefsynth.errors import UserError

    templates = Templates(PromptConfig())
    rows = pl.concat([gens(titles(4)).with_columns(pl.lit(c).alias("candidate"), pl.col("key") + str(c))
                      for c in (0, 1)])
    out = build(rows, titles(4), templates, BuildConfig(validation_fraction=0.0, inconsistent="keep"))
    assert out.stats["familiar_words"] == familiar.load().fingerprint
    (tmp_path / "words.json").write_text("{not json")
    for path in (tmp_path / "missing.json", tmp_path / "words.json"):
        with pytest.raises(UserError, match="build.familiar_words: .* is not a familiar-words file"):
            with_familiarity(pl.DataFrame({"title": [TITLE], "review": [ODD]}), BuildConfig(familiar_words=path))
