"""build: pairing, filters with counts, title splits, unpaired interleaving."""

from __future__ import annotations

import polars as pl
import pytest

from prefsynth.build import BuildConfig, assign_splits, build
from prefsynth.filters import flag_generations
from prefsynth.errors import UserError
from prefsynth.generate import GEN_SCHEMA
from prefsynth.prompts import PromptConfig, Templates

NEG = "The method is weak and the evaluation is unconvincing. Nothing here is new. Reject."
POS = "A beautiful, rigorous paper with strong results on every benchmark. Clear accept."


LONG = ("The paper claims a large gain but the experiments are {} and run on a single dataset with one seed. The "
        "baselines are outdated, the ablations are missing, and the writing hides the fact that the method is a "
        "minor variation of prior work. I cannot recommend acceptance in its current form.")


@pytest.fixture(scope="module")
def templates():
    return Templates(PromptConfig())


_VOCAB = ("data model loss proof bound graph token layer agent reward policy kernel prior noise signal batch "
          "scale sparse dense metric robust attack privacy fairness memory compute").split()


def _distinct(i: int, pol: str) -> str:
    """A different sentence per row, so near-duplicate detection has nothing to find unless a test plants it."""
    import random

    rng = random.Random(f"{i}{pol}")
    return " ".join(rng.choice(_VOCAB) for _ in range(14)).capitalize() + "."


def gens(titles, texts=None, finish=None) -> pl.DataFrame:
    rows = []
    for i, t in enumerate(titles):
        for pol in ("negative", "positive"):
            text = (texts or {}).get((t, pol), f"{NEG if pol == 'negative' else POS} {_distinct(i, pol)}")
            rows.append({"key": f"{t}|{pol}", "title": t, "polarity": pol, "text": text, "prompt_tokens": 100,
                         "completion_tokens": 40, "finish_reason": (finish or {}).get((t, pol), "stop"),
                         "model": "m", "template_hash": "h", "backend": "test"})
    return pl.DataFrame(rows, schema={"key": pl.Utf8, **GEN_SCHEMA})


def titles(n):
    return [f"Paper {i:04d} on things" for i in range(n)]


def test_split_counts_match_reviewer2_and_never_leak(templates):
    ts = titles(1100)
    out = build(gens(ts), ts, templates, BuildConfig(formats="both", near_duplicate=1.0))
    p, u = out.frames["paired"], out.frames["unpaired"]
    assert (p["train"].height, p["validation"].height) == (1000, 100)
    assert (u["train"].height, u["validation"].height) == (2000, 200)
    train_t, val_t = set(p["train"]["title"]), set(p["validation"]["title"])
    assert not train_t & val_t
    assert set(u["train"]["title"]) == train_t and set(u["validation"]["title"]) == val_t


def test_chosen_is_negative_by_default_and_reversible(templates):
    ts = titles(5)
    p = build(gens(ts), ts, templates, BuildConfig(validation_fraction=0.0)).frames["paired"]["train"]
    assert all(c[0]["content"].startswith("The method is weak") for c in p["chosen"])
    assert all(m[0]["role"] == "user" and m[0]["content"] == templates.dataset(t)
               for m, t in zip(p["prompt"], p["title"]))
    q = build(gens(ts), ts, templates, BuildConfig(validation_fraction=0.0, chosen="positive",
                                                   conversational=False)).frames["paired"]["train"]
    assert all(c.startswith("A beautiful") for c in q["chosen"]) and q.schema["prompt"] == pl.Utf8


def test_unpaired_rows_alternate_labels(templates):
    ts = titles(40)
    u = build(gens(ts), ts, templates, BuildConfig(formats="unpaired", validation_fraction=0.0)).frames
    labels = u["unpaired"]["train"]["label"].to_list()
    assert len(labels) == 80 and sum(labels) == 40
    assert all(labels[i] != labels[i + 1] for i in range(0, 80, 2))  # every batch of even size is balanced
    # ...and the rows of one title are not next to each other (pair order shuffled independently per label)
    t = u["unpaired"]["train"]["title"].to_list()
    assert sum(t[i] == t[i + 1] for i in range(0, 80, 2)) < 10


def test_filters_count_what_they_drop(templates):
    ts = titles(10)
    echo = "The central claim rests on two small datasets and baselines that are years out of date. Sadly so."
    texts = {
        (ts[0], "negative"): "   ",
        (ts[1], "positive"): echo,
        (ts[2], "negative"): NEG, (ts[3], "negative"): NEG,  # exact duplicates across titles
        (ts[4], "positive"): "great great great great great great great great great great great great paper paper",
        (ts[5], "negative"): "This paper is weak overall. The experiments are small and the baselines are old and unfair "
                             "and the",  # cut by max_tokens: trimmed back to the first sentence
        (ts[6], "negative"): LONG.format("small"),  # one word apart: a reworded copy
        (ts[7], "negative"): LONG.format("tiny"),
    }
    finish = {(ts[5], "negative"): "length"}
    out = build(gens(ts, texts, finish), ts, templates, BuildConfig(validation_fraction=0.0))
    d = out.stats["dropped"]
    assert d["empty"] == 1 and d["echo"] == 1 and d["duplicate"] == 1 and d["repetitive"] == 1
    assert d["near_duplicate"] == 1
    kept = out.frames["paired"]["train"]
    row = kept.filter(pl.col("title") == ts[5])
    assert row.height == 1 and row["chosen"][0][0]["content"] == "This paper is weak overall."
    assert out.stats["pairs_kept"] == kept.height == 10 - out.stats["pairs_dropped"]


def test_truncated_drop_policy(templates):
    ts = titles(4)
    out = build(gens(ts, finish={(ts[0], "positive"): "length"}), ts, templates,
                BuildConfig(truncated="drop", validation_fraction=0.0, near_duplicate=1.0))
    assert out.stats["dropped"]["truncated"] == 1 and out.stats["pairs_kept"] == 3


def test_echo_of_review_label_prefix_is_cleaned(templates):
    f = flag_generations(gens(["T"], {("T", "negative"): 'Review of "T": Weak paper overall, sadly. Reject.'}),
                         templates, BuildConfig())
    assert f.filter(pl.col("polarity") == "negative")["review"][0] == "Weak paper overall, sadly. Reject."


def test_stable_split_when_titles_are_added():
    cfg = BuildConfig()
    first = assign_splits(titles(110), cfg)
    grown = assign_splits(titles(220), cfg, previous=first)
    assert all(grown[t] == s for t, s in first.items())
    assert sum(s == "validation" for s in grown.values()) == 20
    assert assign_splits(titles(110), cfg) == first  # deterministic


def test_all_pairs_dropped_is_an_error(templates):
    ts = titles(3)
    with pytest.raises(UserError, match="all 3 pairs were dropped"):
        build(gens(ts, {(t, "negative"): "" for t in ts}), ts, templates, BuildConfig())


def test_judge_consistency_drop_and_noise_rate(templates):
    ts = titles(10)
    judged = pl.DataFrame({"key": [f"{t}|{p}" for t in ts for p in ("negative", "positive")]}).with_columns(
        pl.when(pl.col("key").str.ends_with("negative")).then(0.9).otherwise(0.1).alias("judge_llm"))
    # two pairs where the 'positive' review reads more negative than the 'negative' one
    flip = pl.col("key").is_in([f"{ts[0]}|positive", f"{ts[1]}|positive"])
    judged = judged.with_columns(pl.when(flip).then(0.95).otherwise(pl.col("judge_llm")).alias("judge_llm"),
                                 pl.lit(0.5).alias("judge_lexicon"))
    judged = judged.with_columns(((pl.col("judge_llm") + pl.col("judge_lexicon")) / 2).alias("judge_negative"))
    out = build(gens(ts), ts, templates, BuildConfig(validation_fraction=0.0, near_duplicate=1.0), judged)
    assert out.stats["noise_rate_before"] == 0.2 and out.stats["noise_rate_after"] == 0.0
    assert out.stats["dropped"]["inconsistent"] == 2 and out.stats["pairs_kept"] == 8
    kept = out.frames["paired"]["train"]
    assert {"chosen_judge_llm", "rejected_judge_llm", "chosen_judges_agree", "consistent"} <= set(kept.columns)
    # lexicon 0.5 counts as the positive side: it agrees with the llm only on the 8 unflipped positive reviews of 20
    assert out.stats["judge_agreement"] == 0.4
    flagged = build(gens(ts), ts, templates, BuildConfig(validation_fraction=0.0, near_duplicate=1.0,
                                                         inconsistent="flag"), judged)
    assert flagged.stats["pairs_kept"] == 10 and (~flagged.frames["paired"]["train"]["consistent"]).sum() == 2


def test_echo_of_example_titles_and_phrases(tmp_path):
    """Prompts whose examples name a paper (as the original Reviewer #2 prompts did): naming that paper while
    reviewing another is an echo; so is a review stitched from the examples' phrases."""
    import shutil

    from prefsynth.constants import PROMPTS_DIR

    d = tmp_path / "prompts"
    shutil.copytree(PROMPTS_DIR, d)
    (d / "_examples.j2").write_text(
        '{% macro negative() %}Review of "Neural Ordinary Differential Equations": An old idea dressed up, with '
        'small experiments.{% endmacro %}{% macro negative2() %}Weak.{% endmacro %}'
        '{% macro positive() %}Review of "Generative Adversarial Networks": A genuinely new way to train generative '
        'models. The game-theoretic framing is elegant, and the samples are impressive for their time.{% endmacro %}'
        '{% macro positive2() %}Good.{% endmacro %}')
    templates = Templates(PromptConfig(dir=d))
    ts = ["Generative Adversarial Networks", "Some Other Paper"]
    texts = {
        # its own title is fine, even though an example reviews the same paper
        ("Generative Adversarial Networks", "negative"): "Generative Adversarial Networks is overrated and unstable.",
        # naming an example's paper while reviewing another one is an echo
        ("Some Other Paper", "negative"): 'Like "Neural Ordinary Differential Equations", this work is weak.',
        # stitched from the examples' phrases, no whole sentence copied
        ("Some Other Paper", "positive"): "this is a genuinely new way to train generative models and the game-theoretic "
                                          "framing is elegant and the samples are impressive for their time",
    }
    f = flag_generations(gens(ts, texts), templates, BuildConfig())
    echo = {(r["title"], r["polarity"]): r["bad_echo"] for r in f.iter_rows(named=True)}
    assert echo[("Generative Adversarial Networks", "negative")] is False
    assert echo[("Some Other Paper", "negative")] is True
    assert echo[("Some Other Paper", "positive")] is True  # caught by the 4-gram share
    assert f.filter(pl.col("title") == "Some Other Paper")["echo_share"].max() > 0.3


def test_dropped_rows_are_kept_with_their_reasons(templates):
    ts = titles(6)
    texts = {(ts[0], "negative"): "   ", (ts[1], "positive"): "   "}
    out = build(gens(ts, texts), ts, templates, BuildConfig(formats="both", validation_fraction=0.0,
                                                            near_duplicate=1.0))
    gone = out.dropped["paired"]
    assert gone.height == out.stats["pairs_dropped"] == 2
    assert set(gone.get_column("title")) == {ts[0], ts[1]} and gone.get_column("split").to_list() == ["train"] * 2
    by_title = {r["title"]: r for r in gone.iter_rows(named=True)}
    # an empty text is also about no paper: every rule it fails is listed
    assert by_title[ts[0]]["chosen_reasons"][0] == "empty" and by_title[ts[0]]["rejected_reasons"] == []
    assert by_title[ts[0]]["drop_reasons"] == by_title[ts[0]]["chosen_reasons"]
    assert by_title[ts[1]]["rejected_reasons"][0] == "empty" and by_title[ts[1]]["chosen_reasons"] == []
    # the kept rows are what they were; the dropped ones have the kept columns plus the reasons
    kept_cols = out.frames["paired"]["train"].columns
    assert gone.columns[:len(kept_cols)] == kept_cols
    assert not set(out.frames["paired"]["train"].get_column("title")) & {ts[0], ts[1]}
    # unpaired: each side says why, or that only the other review of its pair failed
    u = {(r["title"], r["label"]): r["drop_reasons"][0] for r in out.dropped["unpaired"].iter_rows(named=True)}
    assert u == {(ts[0], True): "empty", (ts[0], False): "other_side",
                 (ts[1], True): "other_side", (ts[1], False): "empty"}
    off = build(gens(ts, texts), ts, templates, BuildConfig(validation_fraction=0.0, keep_dropped=False))
    assert off.dropped == {}
