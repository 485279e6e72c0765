"""Stage 5, build: paired (DPO) and unpaired (KTO) datasets from the same generations, split by title.

Everything here is vectorised polars over whole columns; no Python loop runs per row (100k cached generations
build in well under 3 s). Row filters are flags first and drops second, so every filter reports its own count.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from prefsynth.config import opt
from prefsynth.errors import UserError
from prefsynth.prompts import Templates

ROOT = Path(__file__).resolve().parents[2]
CONFIG_NAMES = ("paired", "unpaired")
SPLITS = ("train", "validation")


@dataclass
class BuildConfig:
    out: Path = opt(ROOT / "data" / "out" / "reviewer2", "output folder (shaped like a Hub dataset repo)",
                    alias="out")
    formats: Literal["paired", "unpaired", "both"] = opt("paired", "which dataset config(s) to write",
                                                         alias="formats")
    chosen: Literal["negative", "positive"] = opt("negative", "polarity of the chosen review (Reviewer #2: negative)")
    validation_fraction: float = opt(1 / 11, "share of titles in validation (1,000/100 at N=1,100)")
    split_seed: int = opt(0, "seed of the title -> split assignment")
    conversational: bool = opt(True, "store prompt/completions as chat messages (TRL applies the chat template)")
    truncated: Literal["trim", "keep", "drop"] = opt(
        "trim", "reviews cut by max_tokens: trim to the last full sentence, keep as is, or drop the pair")
    min_chars: int = opt(20, "reviews shorter than this (after cleaning) count as empty")
    max_repeat: float = opt(0.5, "drop reviews where repeated word 3-grams exceed this share of all 3-grams")
    max_echo: float = opt(0.3, "drop reviews where more than this share of word 4-grams is copied from the prompt")
    near_duplicate: float = opt(0.8, "drop reviews whose 5-char-shingle Jaccard similarity to an earlier review "
                                     "(MinHash estimate) reaches this; 1.0 disables")
    inconsistent: Literal["drop", "flag", "keep"] = opt(
        "drop", "pairs whose judged polarity contradicts the labels: drop, keep with a flag, or ignore")
    shuffle_seed: int = opt(0, "seed for the order of unpaired rows")
    license: str = opt("apache-2.0", "license written into the dataset card")
    lock_timeout: float = opt(0.0, "seconds to wait for another build of the same output folder")

    def config_names(self) -> list[str]:
        return list(CONFIG_NAMES) if self.formats == "both" else [self.formats]


@dataclass
class Built:
    frames: dict[str, dict[str, pl.DataFrame]]  # config -> split -> rows
    stats: dict[str, object] = field(default_factory=dict)


_SENTENCE_END = r"[.!?][\"')\]]*"


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
    return col.str.extract(rf"(?s)^(.*{_SENTENCE_END})", 1).fill_null("").str.strip_chars()


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
    df = df.sort("title", "polarity")
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
    # Duplicates across titles: the first occurrence (in the sorted order) stays.
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
    return " ".join(templates.generation(title, p) for p in ("negative", "positive")) + " " + templates.dataset(title)


def _prompt_ngrams(templates: Templates) -> list[str]:
    return _ngrams(_words(pl.Series([_prompts_text(templates, "")])), _ECHO_N).get_column("_g").unique().to_list()


def _echo_probes(templates: Templates) -> tuple[list[str], list[str]]:
    """Distinctive sentences of the prompts (over 40 characters), and the quoted paper titles of the examples."""
    import re

    text = _prompts_text(templates, "\x00")
    sentences = {s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text)}
    # The examples' paper titles too: a review of one paper that talks about the example paper is an echo.
    quoted = {q for q in re.findall(r'"([^"]*)"', text) if len(q) >= 16 and "\x00" not in q}
    return sorted(s for s in sentences if len(s) > 40 and "\x00" not in s), sorted(quoted)


def assign_splits(titles: list[str], cfg: BuildConfig, previous: dict[str, str] | None = None) -> dict[str, str]:
    """Title -> split, deterministic and stable: titles seen before keep their split; new titles fill validation
    up to the target share in the order of a seeded hash (so the same inputs always give the same split)."""
    previous = {t: s for t, s in (previous or {}).items() if s in SPLITS}
    target_val = round(len(titles) * cfg.validation_fraction)
    assigned = {t: previous[t] for t in titles if t in previous}
    have_val = list(assigned.values()).count("validation")
    fresh = [t for t in titles if t not in assigned]
    digests = [hashlib.sha256(f"{cfg.split_seed}\0{t}".encode()).hexdigest() for t in fresh]
    new = [t for _, t in sorted(zip(digests, fresh))]
    n_val = max(0, min(len(new), target_val - have_val))
    for i, t in enumerate(new):
        assigned[t] = "validation" if i < n_val else "train"
    return assigned


def _messages(role: str, col: str) -> pl.Expr:
    return pl.concat_list(pl.struct(pl.lit(role).alias("role"), pl.col(col).alias("content")))


def build(gens: pl.DataFrame, titles: list[str], templates: Templates, cfg: BuildConfig,
          judged: pl.DataFrame | None = None, previous_splits: dict[str, str] | None = None) -> Built:
    flagged = flag_generations(gens, templates, cfg)
    if judged is not None and judged.height:
        flagged = flagged.join(judged, on="key", how="left")
    rejected_pol = "positive" if cfg.chosen == "negative" else "negative"
    splits = assign_splits(titles, cfg, previous_splits)
    split_df = pl.DataFrame({"title": list(splits), "split": list(splits.values())})
    prompts = pl.DataFrame({"title": titles, "prompt_text": templates.render_many("dataset", titles)})

    keep_cols = ["title", "key", "review", "finish_reason", "completion_tokens", "truncated", "repeat_share",
                 "bad"] + [c for c in flagged.columns if c.startswith("bad_")]
    if {"judge_llm", "judge_lexicon"} <= set(flagged.columns):
        # Per review: do the two judges put it on the same side of 0.5? (null when one judge did not run)
        both = pl.col("judge_llm").is_not_nan() & pl.col("judge_lexicon").is_not_nan()
        flagged = flagged.with_columns(pl.when(both).then((pl.col("judge_llm") > 0.5) == (pl.col("judge_lexicon") > 0.5))
                                       .alias("judges_agree"))
    judge_cols = [c for c in ("judge_llm", "judge_lexicon", "judge_negative", "judges_agree") if c in flagged.columns]
    side = flagged.select(keep_cols + judge_cols + ["polarity"])
    ch = side.filter(pl.col("polarity") == cfg.chosen).drop("polarity")
    rj = side.filter(pl.col("polarity") == rejected_pol).drop("polarity")
    pairs = (prompts.join(ch, on="title", how="inner")
             .join(rj, on="title", how="inner", suffix="_r")
             .join(split_df, on="title", how="left"))
    stats: dict[str, object] = {"titles": len(titles), "pairs_generated": pairs.height}
    drops: dict[str, int] = {}
    for c in [c for c in flagged.columns if c.startswith("bad_")]:
        drops[c[4:]] = int((pairs.get_column(c) | pairs.get_column(f"{c}_r")).sum())
    pairs = pairs.with_columns((pl.col("bad") | pl.col("bad_r")).alias("_drop"))

    if judge_cols:
        # Consistent: the chosen review is judged more in the chosen polarity than the rejected one.
        sign = 1 if cfg.chosen == "negative" else -1
        pairs = pairs.with_columns(
            (sign * (pl.col("judge_negative") - pl.col("judge_negative_r")) > 0).alias("consistent"),
        )
        clean = pairs.filter(~pl.col("_drop"))
        stats["noise_rate_before"] = _rate(pairs, "consistent")
        stats["noise_rate_after_filters"] = _rate(clean, "consistent")
        if cfg.inconsistent == "drop":
            drops["inconsistent"] = int((~pairs.get_column("consistent") & ~pairs.get_column("_drop")).sum())
            pairs = pairs.with_columns((pl.col("_drop") | ~pl.col("consistent")).alias("_drop"))
        stats["noise_rate_after"] = _rate(pairs.filter(~pl.col("_drop")), "consistent")
        agree = pl.concat([pairs.get_column("judges_agree"), pairs.get_column("judges_agree_r")]).drop_nulls()
        stats["judge_agreement"] = round(float(agree.mean()), 4) if len(agree) else float("nan")
    stats["dropped"] = drops
    stats["pairs_dropped"] = int(pairs.get_column("_drop").sum())
    kept = pairs.filter(~pl.col("_drop")).sort("title")
    stats["pairs_kept"] = kept.height
    if kept.height == 0:
        hits = ", ".join(f"{k} {v}" for k, v in drops.items() if v)
        raise UserError(f"all {pairs.height} pairs were dropped by the filters ({hits}); nothing written. "
                        f"Loosen them (see `prefsynth build --help`, build.*) or check the model's output")

    if cfg.conversational:
        prompt_expr, chosen_expr, rejected_expr = (
            _messages("user", "prompt_text"), _messages("assistant", "review"), _messages("assistant", "review_r"))
    else:
        prompt_expr, chosen_expr, rejected_expr = pl.col("prompt_text"), pl.col("review"), pl.col("review_r")
    meta = [pl.col("title"), pl.col("key").alias("chosen_key"), pl.col("key_r").alias("rejected_key"),
            pl.col("finish_reason").alias("chosen_finish_reason"),
            pl.col("finish_reason_r").alias("rejected_finish_reason"),
            pl.col("completion_tokens").alias("chosen_tokens"), pl.col("completion_tokens_r").alias("rejected_tokens")]
    jmeta = []
    for c in judge_cols:
        jmeta += [pl.col(c).alias(f"chosen_{c}"), pl.col(f"{c}_r").alias(f"rejected_{c}")]
    if judge_cols:
        jmeta += [pl.col("consistent")]
    frames: dict[str, dict[str, pl.DataFrame]] = {}
    paired = kept.select(prompt_expr.alias("prompt"), chosen_expr.alias("chosen"), rejected_expr.alias("rejected"),
                         *meta, *jmeta, pl.col("split"))
    if "paired" in cfg.config_names():
        frames["paired"] = {s: paired.filter(pl.col("split") == s).drop("split") for s in SPLITS}
    if "unpaired" in cfg.config_names():
        frames["unpaired"] = {s: _unpaired(kept.filter(pl.col("split") == s), cfg, prompt_expr, judge_cols)
                              for s in SPLITS}
    stats["rows"] = {c: {s: f.height for s, f in d.items()} for c, d in frames.items()}
    values = list(splits.values())
    stats["split_titles"] = {s: values.count(s) for s in SPLITS}
    return Built(frames, stats)


def _rate(df: pl.DataFrame, col: str) -> float:
    """Share of rows where `col` is False (the noise rate when col = consistent)."""
    return round(float((~df.get_column(col)).mean()), 4) if df.height else 0.0


def _unpaired(pairs: pl.DataFrame, cfg: BuildConfig, prompt_expr: pl.Expr, judge_cols: list[str]) -> pl.DataFrame:
    """Two rows per pair. Desirable and undesirable rows are shuffled separately and interleaved, so every
    consecutive pair of rows holds one of each: any batch of even size mixes labels (KTO needs that)."""
    def side(suffix: str, label: bool) -> pl.DataFrame:
        completion = (_messages("assistant", f"review{suffix}") if cfg.conversational else pl.col(f"review{suffix}"))
        return pairs.select(
            prompt_expr.alias("prompt"), completion.alias("completion"), pl.lit(label).alias("label"),
            pl.col("title"), pl.col(f"key{suffix}").alias("key"),
            pl.col(f"finish_reason{suffix}").alias("finish_reason"),
            pl.col(f"completion_tokens{suffix}").alias("tokens"),
            *[pl.col(f"{c}{suffix}").alias(c) for c in judge_cols],
        ).sample(fraction=1.0, shuffle=True, seed=cfg.shuffle_seed + (1 if label else 2))

    good, bad = side("", True), side("_r", False)
    n = good.height
    order = pl.DataFrame({"_o": pl.Series(list(range(0, 2 * n, 2)), dtype=pl.Int64)})
    good = pl.concat([good, order], how="horizontal")
    bad = pl.concat([bad, order.with_columns(pl.col("_o") + 1)], how="horizontal")
    return pl.concat([good, bad]).sort("_o").drop("_o")


def parquet_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", compression_level=3, statistics=True)
    return buf.getvalue()


def read_previous_splits(out: Path) -> dict[str, str]:
    """Title -> split from an existing output folder (any config), so rebuilds never move a title."""
    result: dict[str, str] = {}
    for name in CONFIG_NAMES:
        for split in SPLITS:
            p = Path(out) / name / f"{split}.parquet"
            if p.exists():
                for t in pl.read_parquet(p, columns=["title"]).get_column("title").unique().to_list():
                    result[t] = split
    manifest = Path(out) / "prefsynth.json"
    if manifest.exists():
        try:
            result.update(json.loads(manifest.read_text()).get("splits", {}))
        except ValueError:
            pass
    return result
