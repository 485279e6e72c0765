"""The build stage's row filters: clean every review, then flag it per filter (`bad_*` columns), never drop here.

Everything is vectorised polars over whole columns; no Python loop runs per row. Every n-gram feature comes from
one pass over the words. `build` turns the flags into drops and counts each filter's hits.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import polars as pl

from prefsynth.constants import SENTENCE_END
from prefsynth.prompts import POLARITIES, Templates

if TYPE_CHECKING:
    from prefsynth.build import BuildConfig




def clean_review(col: pl.Expr) -> pl.Expr:
    """Strip whitespace, a leading preamble line ("Here's a harsh review:"), a 'Review of "...":' echo of the
    example format and a leading 'Review:' label."""
    return (col.str.strip_chars()
            .str.replace(r"^(?i)(sure[,!.]?\s*)?here(?:'s| is)[^\n]{0,100}:\s*", "")
            .str.replace(r'^(?i)(example( review)? \d+:\s*)?review of\s+"[^"\n]*"\s*:\s*', "")
            .str.replace(r"^(?i)(your )?review:\s*", "")
            .str.strip_chars())


def _trim_to_sentence(col: pl.Expr) -> pl.Expr:
    """Cut text back to its last sentence end; text with no sentence end becomes empty."""
    return col.str.extract(rf"(?s)^(.*{SENTENCE_END})", 1).fill_null("").str.strip_chars()


def _per_row(grams: pl.DataFrame, n_rows: int, agg: pl.Expr) -> pl.Series:
    """One value per row (0 for rows without any n-gram) from an aggregation over that row's n-grams."""
    per_row = grams.group_by("_row").agg(agg.alias("_v"))
    return (pl.DataFrame({"_row": pl.int_range(n_rows, eager=True)}).join(per_row, on="_row", how="left")
            .sort("_row").get_column("_v").fill_null(0.0))


_MINHASH_PERMS = 16
_BANDS = 4  # 4 bands x 4 rows: pairs at Jaccard 0.8 become candidates with probability ~0.98
_MAX_BUCKET = 64  # compare a row with at most this many earlier rows of one bucket (exact copies are removed first)


def _near_duplicate_of_earlier(grams: pl.DataFrame, n: int, threshold: float) -> pl.Series:
    """True for rows whose word-3-gram Jaccard similarity with an earlier row reaches `threshold`.

    MinHash signatures are computed in numpy over all 3-grams at once (multiply-shift hashing, one pass per
    permutation); banded LSH proposes candidate pairs; each candidate is then confirmed with the exact Jaccard, so
    the estimate's noise never decides a drop. Exact duplicates are the `duplicate` filter's job.
    """
    import numpy as np

    flags = np.zeros(n, dtype=bool)
    if threshold >= 1.0 or n < 2 or grams.height == 0:
        return pl.Series(flags)
    rows = grams.get_column("_row").to_numpy()
    h = grams.get_column("_g").hash(seed=11).to_numpy()
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    row_ids = rows[starts]
    rng = np.random.default_rng(12345)
    mult = rng.integers(1, 2**63, size=_MINHASH_PERMS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    add = rng.integers(0, 2**63, size=_MINHASH_PERMS, dtype=np.uint64)
    sig = np.empty((len(row_ids), _MINHASH_PERMS), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(_MINHASH_PERMS):
            sig[:, k] = np.minimum.reduceat((h * mult[k] + add[k]) >> np.uint64(32), starts)
    per = _MINHASH_PERMS // _BANDS
    bands = pl.concat([
        pl.DataFrame({"_row": row_ids, "_band": np.full(len(row_ids), b),
                      "_key": pl.DataFrame(sig[:, b * per:(b + 1) * per]).hash_rows(seed=b)})
        for b in range(_BANDS)])
    # Candidate pairs: rows sharing a band key (at most _MAX_BUCKET per bucket), as a self-join.
    ranked = (bands.with_columns(pl.col("_row").rank("ordinal").over("_band", "_key").alias("_rank"))
              .filter(pl.col("_rank") <= _MAX_BUCKET).drop("_rank"))
    cand = (ranked.join(ranked, on=["_band", "_key"], suffix="_l").filter(pl.col("_row") < pl.col("_row_l"))
            .select(pl.col("_row").alias("_e"), pl.col("_row_l").alias("_l")).unique())
    if cand.height == 0:
        return pl.Series(flags)
    # Exact Jaccard of each candidate pair, by joins: |A & B| / (|A| + |B| - |A & B|).
    g = grams.select("_row", "_g").unique()
    sizes = g.group_by("_row").agg(pl.len().alias("_n"))
    inter = (cand.join(g, left_on="_e", right_on="_row")
             .join(g, left_on=["_l", "_g"], right_on=["_row", "_g"], how="semi")
             .group_by("_e", "_l").agg(pl.len().alias("_i")))
    hits = (inter.join(sizes, left_on="_e", right_on="_row").join(sizes, left_on="_l", right_on="_row", suffix="_b")
            .filter(pl.col("_i") / (pl.col("_n") + pl.col("_n_b") - pl.col("_i")) >= threshold))
    flags[hits.get_column("_l").unique().to_numpy()] = True
    return pl.Series(flags)


def flag_generations(gens: pl.DataFrame, templates: Templates, cfg: BuildConfig) -> pl.DataFrame:
    """Clean every review and add one boolean column per filter (`bad_*`) plus `bad` (any)."""
    df = gens.with_columns(clean_review(pl.col("text")).alias("review"))
    truncated = pl.col("finish_reason") == "length"
    if cfg.truncated == "trim":
        df = df.with_columns(pl.when(truncated).then(_trim_to_sentence(pl.col("review")))
                             .otherwise(pl.col("review")).alias("review"))
    df = df.with_columns(
        truncated.alias("truncated"),
        (pl.col("review").str.len_chars() < cfg.min_chars).alias("bad_empty"),
    )
    # Every n-gram feature below comes from one pass over the words, in the final (deterministic) row order.
    # Candidates of earlier rounds come first: a copy is always the later text, so a round never turns a review an
    # earlier round settled into a copy of its own new candidate (prefsynth.rounds samples no more for that review).
    df = df.sort([c for c in ("candidate", "title", "polarity") if c in df.columns])
    words = _words(df.get_column("review"))
    grams3, grams4 = _ngrams(words, 3), _ngrams(words, _ECHO_N)
    # Echo: the review repeats a few-shot example (or the instruction) verbatim. The example sentences are the
    # same for every prompt, so this is a handful of literal substring checks per column, not per row.
    sentences, example_titles = _echo_probes(templates)
    echo = pl.lit(False)
    for p in sentences:
        echo = echo | pl.col("review").str.contains(p, literal=True)
    for p in example_titles:  # naming an example's paper, unless it is the paper under review
        echo = echo | (pl.col("review").str.contains(p, literal=True) & (pl.col("title").str.to_lowercase() != p.lower()))
    # ...or stitches the examples' phrases together: the share of its word 4-grams found in the prompts.
    share = _per_row(grams4, df.height, pl.col("_g").is_in(_prompt_ngrams(templates)).mean())
    df = df.with_columns(pl.Series("echo_share", share).cast(pl.Float32))
    df = df.with_columns((echo | (pl.col("echo_share") > cfg.max_echo)).alias("bad_echo"))
    # Repetition: the share of a review's word 3-grams that repeat an earlier 3-gram of the same review.
    repeat = _per_row(grams3, df.height, 1 - pl.col("_g").n_unique() / pl.len())
    df = df.with_columns(pl.Series("repeat_share", repeat).cast(pl.Float32))
    df = df.with_columns((pl.col("repeat_share") > cfg.max_repeat).alias("bad_repetitive"))
    df = df.with_columns((truncated & (cfg.truncated == "drop")).alias("bad_truncated"))
    # Duplicates across titles: the first occurrence (in the sorted order: earliest round first) stays.
    norm = pl.col("review").str.to_lowercase().str.replace_all(r"\W+", " ").str.strip_chars()
    df = df.with_columns(norm.is_duplicated().and_(norm.is_first_distinct().not_()).alias("bad_duplicate"))
    near = _near_duplicate_of_earlier(grams3, df.height, cfg.near_duplicate)
    df = df.with_columns((pl.Series("bad_near_duplicate", near) & ~pl.col("bad_duplicate")))
    bad_cols = [c for c in df.columns if c.startswith("bad_")]
    return df.with_columns(pl.any_horizontal(bad_cols).alias("bad"))


_ECHO_N = 4


def _words(col: pl.Series) -> pl.DataFrame:
    return (pl.DataFrame({"_row": pl.int_range(len(col), eager=True), "_w": col.str.to_lowercase()
                          .str.extract_all(r"\w+")}).explode("_w").drop_nulls("_w"))


def _ngrams(words: pl.DataFrame, n: int) -> pl.DataFrame:
    """(_row, _g) word n-grams within each row, from global shifts masked where the row changes."""
    same = pl.col("_row").shift(-(n - 1)) == pl.col("_row")
    gram = pl.col("_w")
    for i in range(1, n):
        gram = gram + " " + pl.col("_w").shift(-i)
    return words.select("_row", pl.when(same).then(gram).alias("_g")).drop_nulls("_g")


def _prompts_text(templates: Templates, title: str) -> str:
    """Every prompt a review could copy from, rendered for `title`."""
    return " ".join(templates.generation(title, p) for p in POLARITIES) + " " + templates.dataset(title)


def _prompt_ngrams(templates: Templates) -> list[str]:
    return _ngrams(_words(pl.Series([_prompts_text(templates, "")])), _ECHO_N).get_column("_g").unique().to_list()


def _echo_probes(templates: Templates) -> tuple[list[str], list[str]]:
    """Distinctive sentences of the prompts (over 40 characters), and the quoted paper titles of the examples."""


    text = _prompts_text(templates, "\x00")
    sentences = {s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text)}
    # The examples' paper titles too: a review of one paper that talks about the example paper is an echo.
    quoted = {q for q in re.findall(r'"([^"]*)"', text) if len(q) >= 16 and "\x00" not in q}
    return sorted(s for s in sentences if len(s) > 40 and "\x00" not in s), sorted(quoted)
