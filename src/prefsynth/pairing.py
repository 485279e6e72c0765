"""How a pair is formed from candidates: `steered` or `sampled` (build.pairing).

steered (the Reviewer #2 recipe): a "negative" and a "positive" instruction each write reviews, and the dataset
stores the neutral prompt that neither was sampled from. DPO then compares two completions the policy was never
asked for; the original author blamed that for a DPO run that did not converge.

sampled (on-policy): every candidate is sampled from the stored dataset prompt itself (prompts.NEUTRAL: no opening
words, no system message of ours), so chosen and rejected really are two completions of the prompt the policy sees.
The judge decides which side each one is on: chosen = the valid candidate judged most clearly of the chosen
polarity, rejected = the valid one judged most clearly of the other, kept when their judged margin reaches
`min_margin`. A title with fewer than two valid candidates, or too small a margin, gives no pair (counted).
"""

from __future__ import annotations

import polars as pl

MARGIN_COL = "_margin"


def toward_chosen(chosen: str) -> pl.Expr:
    """The judged probability that a text has the chosen polarity (judge_negative is P(negative))."""
    neg = pl.col("judge_negative").fill_nan(None)
    return neg if chosen == "negative" else 1 - neg


def sampled_pairs(flagged: pl.DataFrame, chosen: str, min_margin: float) -> tuple[pl.DataFrame, dict[str, object]]:
    """From judged candidates (one polarity, NEUTRAL), two rows per title that forms a pair: the chosen one labelled
    `chosen`, the rejected one labelled the other polarity. Returns (rows, stats)."""
    other = "positive" if chosen == "negative" else "negative"
    titles = flagged.get_column("title").n_unique()
    valid = flagged.filter(~pl.col("bad")).with_columns(toward_chosen(chosen).alias("_toward")) \
        .filter(pl.col("_toward").is_not_null())
    order = ["title", "_toward", "candidate"]
    best = valid.sort(order, descending=[False, True, False]).unique("title", keep="first", maintain_order=True)
    # ties broken the other way round, so two equally judged candidates still give two different texts
    worst = valid.sort(order, descending=[False, False, True]).unique("title", keep="first", maintain_order=True)
    both = best.select("title", pl.col("key").alias("_kb"), pl.col("_toward").alias("_tb")).join(
        worst.select("title", pl.col("key").alias("_kw"), pl.col("_toward").alias("_tw")), on="title")
    both = both.with_columns((pl.col("_tb") - pl.col("_tw")).alias(MARGIN_COL))
    two = both.filter(pl.col("_kb") != pl.col("_kw"))
    kept = two.filter(pl.col(MARGIN_COL) >= min_margin)
    chosen_rows = valid.join(kept.select("title", pl.col("_kb").alias("key"), MARGIN_COL), on=["title", "key"])
    rejected_rows = valid.join(kept.select("title", pl.col("_kw").alias("key"), MARGIN_COL), on=["title", "key"])
    rows = pl.concat([chosen_rows.with_columns(pl.lit(chosen).alias("polarity")),
                      rejected_rows.with_columns(pl.lit(other).alias("polarity"))], how="vertical_relaxed")
    stats: dict[str, object] = {
        "pairing": "sampled", "min_margin": min_margin, "titles": titles,
        "candidates_generated": flagged.height, "candidates_valid": valid.height,
        "titles_without_two_valid": titles - two.height,
        "titles_margin_too_small": two.height - kept.height,
        "titles_with_pair": kept.height,
        "pair_yield": round(kept.height / titles, 4) if titles else 0.0,
        "mean_margin": round(float(kept.get_column(MARGIN_COL).mean()), 4) if kept.height else 0.0,
    }
    return rows.drop("_toward"), stats


def sampled_settled(flagged: pl.DataFrame, chosen: str, min_margin: float) -> set[str]:
    """Titles whose candidates already make a pair (generation rounds stop sampling for them)."""
    rows, _ = sampled_pairs(flagged, chosen, min_margin)
    return set(rows.get_column("title").to_list())
