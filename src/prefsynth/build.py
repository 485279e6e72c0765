"""Stage 5, build: paired (DPO) and unpaired (KTO) datasets from the same generations, split by title.

Everything here is vectorised polars over whole columns; no Python loop runs per row (100k cached generations
build in well under 3 s). Row filters (prefsynth.filters) are flags first and drops second here, so every filter
reports its own count.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from prefsynth.config import opt
from prefsynth.constants import CONFIG_NAMES, DEFAULT_OUT, SPLITS
from prefsynth.errors import UserError
from prefsynth.familiar import FAMILIAR_FILE
from prefsynth.familiar import load as familiar_words
from prefsynth.filters import flag_generations
from prefsynth.manifest import Manifest
from prefsynth.pairing import sampled_pairs
from prefsynth.prompts import Templates
from prefsynth.validity import REASONS, validity_flags
from prefsynth.validity_scorer import SCORED, active_scorer


@dataclass
class BuildConfig:
    out: Path = opt(DEFAULT_OUT, "output folder (shaped like a Hub dataset repo)",
                    alias="out")
    formats: Literal["paired", "unpaired", "both"] = opt("paired", "which dataset config(s) to write",
                                                         alias="formats")
    chosen: Literal["negative", "positive"] = opt("negative", "polarity of the chosen review (Reviewer #2: negative)")
    pairing: Literal["steered", "sampled"] = opt(
        "steered", "steered: polarity instructions write chosen and rejected, the neutral prompt is stored (the "
                   "Reviewer #2 recipe); sampled: on-policy, every candidate is sampled from the stored prompt and "
                   "the judge picks chosen and rejected (prefsynth/pairing.py)", alias="pairing")
    min_margin: float = opt(0.3, "sampled pairing: least judged difference (probability of the chosen polarity) "
                                 "between chosen and rejected for a pair to be kept")
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
    invalid: Literal["drop", "flag", "keep"] = opt(
        "drop", "texts that are not the reviewer's review of the paper (author voice, meta-talk, hearsay, "
                "instruction echo, copied examples, wrong paper, not about the paper, incoherent; "
                "prefsynth/validity.py): drop, keep with a flag, or ignore")
    max_p_invalid: float = opt(
        1.0, "with invalid drop or flag: texts the validity scorer (learned from the hand-read labels; "
             "prefsynth/validity_scorer.py) gives a higher probability of not being a valid review count as "
             "low_validity_score; 1.0 (the default until its gain is measured on texts read blind) turns it off, "
             "0.15 is the threshold benched in docs/quality.md")
    prefer_familiar: bool = opt(
        True, "steered pairing with generate.candidates > 1: a passing candidate with a word neither its title nor "
              "accepted reviews of other papers use (prefsynth/familiar.py) gets another candidate sampled, and is "
              "kept only when none without one passes; drops nothing")
    familiar_words: Path = opt(FAMILIAR_FILE, "the word counts prefer_familiar reads (`prefsynth validity-eval "
                                              "--familiar` counts them from hand-read labels of the default writer)")
    inconsistent: Literal["drop", "flag", "keep"] = opt(
        "drop", "pairs whose judged polarity contradicts the labels (the chosen review not judged "
                "chosen-polarity, or the rejected one not judged the other): drop, keep with a flag, or ignore")
    keep_dropped: bool = opt(True, "write the rows the filters dropped to dropped/<config>.parquet with their reasons "
                                   "(read by `prefsynth view`; no dataset config or trainer reads them)")
    shuffle_seed: int = opt(0, "seed for the order of unpaired rows")
    license: str = opt("apache-2.0", "license written into the dataset card")
    lock_timeout: float = opt(0.0, "seconds to wait for another build of the same output folder")

    def config_names(self) -> list[str]:
        return list(CONFIG_NAMES) if self.formats == "both" else [self.formats]


@dataclass
class Built:
    frames: dict[str, dict[str, pl.DataFrame]]  # config -> split -> rows
    stats: dict[str, object] = field(default_factory=dict)
    dropped: dict[str, pl.DataFrame] = field(default_factory=dict)  # config -> dropped rows (+ split, drop_reasons)


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
          judged: pl.DataFrame | None = None, splits: dict[str, str] | None = None) -> Built:
    """`splits` (title -> split, from `assign_splits`) is computed once by the pipeline, which also writes it into
    the manifest; without it every title is new (a fresh output folder)."""
    if splits is None:
        splits = assign_splits(titles, cfg)
    t0 = time.perf_counter()
    flagged = flag_all(gens, templates, cfg)
    flag_seconds = time.perf_counter() - t0
    if judged is not None and judged.height:
        flagged = flagged.join(judged, on="key", how="left")
    if cfg.pairing == "sampled":
        if "judge_negative" not in flagged.columns:
            raise UserError("build.pairing sampled needs the polarity judge (judge.enabled true): it is what "
                            "decides which sampled review is chosen and which rejected")
        filtered = {c[4:]: int(flagged.get_column(c).sum()) for c in flagged.columns if c.startswith("bad_")}
        flagged, candidate_stats = sampled_pairs(flagged, cfg.chosen, cfg.min_margin)
        candidate_stats = {"sampled": {**candidate_stats, "candidates_dropped": filtered}}
    else:
        flagged, candidate_stats = best_candidates(flagged)
    rejected_pol = "positive" if cfg.chosen == "negative" else "negative"
    split_df = pl.DataFrame({"title": list(splits), "split": list(splits.values())})
    prompts = pl.DataFrame({"title": titles, "prompt_text": templates.render_many("dataset", titles)})

    keep_cols = ["title", "key", "review", "finish_reason", "completion_tokens", "truncated", "repeat_share",
                 "bad"] + [c for c in flagged.columns if c.startswith("bad_")]
    if cfg.invalid == "flag":
        keep_cols.append("invalid")
    if {"judge_llm", "judge_lexicon"} <= set(flagged.columns):
        # Per review: do the two judges put it on the same side of 0.5? (null when one judge did not run)
        both = pl.col("judge_llm").is_not_nan() & pl.col("judge_lexicon").is_not_nan()
        flagged = flagged.with_columns(pl.when(both).then((pl.col("judge_llm") > 0.5) == (pl.col("judge_lexicon") > 0.5))
                                       .alias("judges_agree"))
    judge_cols = [c for c in ("judge_llm", "judge_lexicon", "judge_text", "judge_negative", "judges_agree")
                  if c in flagged.columns]
    side = flagged.select(keep_cols + judge_cols + ["polarity"])
    ch = side.filter(pl.col("polarity") == cfg.chosen).drop("polarity")
    rj = side.filter(pl.col("polarity") == rejected_pol).drop("polarity")
    pairs = (prompts.join(ch, on="title", how="inner")
             .join(rj, on="title", how="inner", suffix="_r")
             .join(split_df, on="title", how="left"))
    stats: dict[str, object] = {"titles": len(titles), "pairs_generated": pairs.height, **candidate_stats,
                                "validity_seconds": round(flag_seconds, 3)}
    if cfg.prefer_familiar and cfg.pairing == "steered" and candidate_stats:
        stats["familiar_words"] = familiar_words(Path(cfg.familiar_words)).fingerprint
    drops: dict[str, int] = {}
    if cfg.pairing == "sampled":  # the filters acted on candidates; a title is what fails to make a pair
        drops["no_pair"] = len(titles) - pairs.height
    for c in [c for c in flagged.columns if c.startswith("bad_")]:
        drops[c[4:]] = int((pairs.get_column(c) | pairs.get_column(f"{c}_r")).sum())
    pairs = pairs.with_columns((pl.col("bad") | pl.col("bad_r")).alias("_drop"))

    if judge_cols:
        # Consistent: each side is judged to have its labelled polarity (the chosen review more likely negative than
        # not when chosen = negative, the rejected one more likely positive), the claim the noise estimate checks.
        sign = 1 if cfg.chosen == "negative" else -1
        pairs = pairs.with_columns(
            ((sign * (pl.col("judge_negative") - 0.5) > 0) & (sign * (0.5 - pl.col("judge_negative_r")) > 0))
            .alias("consistent"),
        )
        clean = pairs.filter(~pl.col("_drop"))
        # How often the judge finds each side of the clean pairs in its labelled polarity: with the judge's
        # measured accuracy this estimates the noise left in the kept rows (prefsynth.quality).
        c_ok = (sign * (clean.get_column("judge_negative") - 0.5) > 0).sum()
        r_ok = (sign * (0.5 - clean.get_column("judge_negative_r")) > 0).sum()
        stats["judged_sides"] = {"chosen_ok": int(c_ok), "chosen_total": clean.height, "rejected_ok": int(r_ok),
                                 "rejected_total": clean.height}
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
    pairs = pairs.with_columns(_reasons(flagged, cfg, judge_cols))
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
    if cfg.invalid == "flag":
        jmeta += [(~pl.col("invalid")).alias("chosen_valid"), (~pl.col("invalid_r")).alias("rejected_valid")]
    for c in judge_cols:
        jmeta += [pl.col(c).alias(f"chosen_{c}"), pl.col(f"{c}_r").alias(f"rejected_{c}")]
    if judge_cols:
        jmeta += [pl.col("consistent")]
    frames: dict[str, dict[str, pl.DataFrame]] = {}
    columns = [prompt_expr.alias("prompt"), chosen_expr.alias("chosen"), rejected_expr.alias("rejected"), *meta,
               *jmeta]
    paired = kept.select(*columns, pl.col("split"))
    gone = pairs.filter(pl.col("_drop")).sort("title")
    dropped: dict[str, pl.DataFrame] = {}
    if "paired" in cfg.config_names():
        frames["paired"] = {s: paired.filter(pl.col("split") == s).drop("split") for s in SPLITS}
        dropped["paired"] = gone.select(*columns, "split", "drop_reasons", "chosen_reasons", "rejected_reasons")
    if "unpaired" in cfg.config_names():
        frames["unpaired"] = {s: _unpaired(kept.filter(pl.col("split") == s), cfg, prompt_expr, judge_cols)
                              for s in SPLITS}
        dropped["unpaired"] = _unpaired(gone, cfg, prompt_expr, judge_cols, ["split"], with_reasons=True)
    stats["rows"] = {c: {s: f.height for s, f in d.items()} for c, d in frames.items()}
    values = list(splits.values())
    stats["split_titles"] = {s: values.count(s) for s in SPLITS}
    return Built(frames, stats, dropped if cfg.keep_dropped else {})


def _reasons(flagged: pl.DataFrame, cfg: BuildConfig, judge_cols: list[str]) -> list[pl.Expr]:
    """Why each pair was dropped: per side, the filters it failed (plus "inconsistent" when its judged polarity
    contradicts its label and such pairs are dropped), and for the pair all of them. Empty for kept pairs."""
    bad = [c for c in flagged.columns if c.startswith("bad_")]
    sign = 1 if cfg.chosen == "negative" else -1
    judged = "judge_negative" in judge_cols and cfg.inconsistent == "drop"

    def side(suffix: str, wrong: pl.Expr) -> pl.Expr:
        parts = [pl.when(pl.col(f"{c}{suffix}")).then(pl.lit(c[4:])) for c in bad]
        if judged:
            parts.append(pl.when(wrong.fill_null(False)).then(pl.lit("inconsistent")))
        return pl.concat_list(parts).list.drop_nulls()

    wrong_c = sign * (pl.col("judge_negative") - 0.5) <= 0 if judged else pl.lit(False)
    wrong_r = sign * (0.5 - pl.col("judge_negative_r")) <= 0 if judged else pl.lit(False)
    c, r = side("", wrong_c), side("_r", wrong_r)
    both = pl.concat_list(c, r).list.unique(maintain_order=True)
    return [c.alias("chosen_reasons"), r.alias("rejected_reasons"), both.alias("drop_reasons")]


def flag_all(gens: pl.DataFrame, templates: Templates, cfg: BuildConfig) -> pl.DataFrame:
    """Every filter's flag (`bad_*`, `bad`): the text filters, then the validity rules and the validity scorer (as
    filters when dropped)."""
    flagged = flag_generations(gens, templates, cfg)
    if cfg.invalid != "keep":
        flagged = validity_flags(flagged, templates)
        reasons = list(REASONS)
        if (scorer := active_scorer(cfg.max_p_invalid)) is not None:
            p = scorer.p_invalid(flagged.get_column("review").fill_null("").to_list())
            flagged = flagged.with_columns(pl.Series("p_invalid", p, dtype=pl.Float64)).with_columns(
                (pl.col("p_invalid") > cfg.max_p_invalid).alias(f"invalid_{SCORED}"))
            flagged = flagged.with_columns((pl.col("invalid") | pl.col(f"invalid_{SCORED}")).alias("invalid"))
            reasons.append(SCORED)
        if cfg.invalid == "drop":  # each reason becomes a filter, counted like the others
            flagged = flagged.with_columns(pl.col(f"invalid_{r}").alias(f"bad_{r}") for r in reasons)
            flagged = flagged.with_columns(pl.any_horizontal(c for c in flagged.columns if c.startswith("bad_"))
                                           .alias("bad"))
    return with_familiarity(flagged, cfg)


def with_familiarity(flagged: pl.DataFrame, cfg: BuildConfig) -> pl.DataFrame:
    """`unfamiliar`: the text uses a word its title does not license and accepted reviews do not use (a
    preference among candidates, not a filter: prefsynth.familiar). False everywhere when the preference is off."""
    if not (cfg.prefer_familiar and cfg.pairing == "steered") or not flagged.height:
        return flagged.with_columns(pl.lit(False).alias("unfamiliar"))
    known = familiar_words(Path(cfg.familiar_words))
    odd = known.any_unfamiliar(flagged.get_column("review"), flagged.get_column("title"))
    return flagged.with_columns(odd.alias("unfamiliar"))


def best_candidates(flagged: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, object]]:
    """One row per (title, polarity): of several candidates, one that passes every filter; among those, one the
    judge puts on its side, then one without unfamiliar words (`with_familiarity`), then the one judged most clearly
    of its polarity (most negative for a negative review), then the lowest index. With one candidate per review this
    changes nothing."""
    if "candidate" not in flagged.columns or flagged.get_column("candidate").max() in (None, 0):
        return flagged, {}
    n = int(flagged.get_column("candidate").max()) + 1
    score = pl.col("judge_negative") if "judge_negative" in flagged.columns else pl.lit(0.5)
    side = pl.when(pl.col("polarity") == "negative").then(score).otherwise(1 - score).fill_nan(0.5).fill_null(0.5)
    ok = flagged.group_by("title", "polarity").agg((~pl.col("bad")).any().alias("_ok"))
    odd = "unfamiliar" if "unfamiliar" in flagged.columns else "bad"  # no column: sorting on bad twice is a no-op
    # judged on the wrong side ranks below an unfamiliar word: the preference never costs a pair the judge keeps
    best = (flagged.with_columns(side.alias("_side"), (side < 0.5).alias("_wrong"))
            .sort(["title", "polarity", "bad", "_wrong", odd, "_side", "candidate"],
                  descending=[False, False, False, False, False, True, False])
            .unique(["title", "polarity"], keep="first", maintain_order=True).drop("_side", "_wrong"))
    stats = {"candidates": n, "reviews_with_a_clean_candidate": int(ok.get_column("_ok").sum()),
             "kept_with_unfamiliar_words": int(best.filter(~pl.col("bad") & pl.col(odd)).height)
             if odd == "unfamiliar" else 0,
             "reviews_wanted": ok.height, "candidates_clean": int((~flagged.get_column("bad")).sum()),
             "candidates_generated": flagged.height}
    return best, stats


def _rate(df: pl.DataFrame, col: str) -> float:
    """Share of rows where `col` is False (the noise rate when col = consistent)."""
    return round(float((~df.get_column(col)).mean()), 4) if df.height else 0.0


def _unpaired(pairs: pl.DataFrame, cfg: BuildConfig, prompt_expr: pl.Expr, judge_cols: list[str],
              extra: list[str] | None = None, with_reasons: bool = False) -> pl.DataFrame:
    """Two rows per pair. Desirable and undesirable rows are shuffled separately and interleaved, so every
    consecutive pair of rows holds one of each: any batch of even size mixes labels (KTO needs that). Dropped rows
    (`with_reasons`) carry their side's reasons, or "other_side" when only the other review of the pair failed."""
    def side(suffix: str, label: bool) -> pl.DataFrame:
        more = [pl.col(c) for c in extra or []]
        if with_reasons:
            own = pl.col("chosen_reasons" if label else "rejected_reasons")
            more.append(pl.when(own.list.len() > 0).then(own).otherwise(pl.lit(["other_side"]))
                        .alias("drop_reasons"))
        completion = (_messages("assistant", f"review{suffix}") if cfg.conversational else pl.col(f"review{suffix}"))
        return pairs.select(
            prompt_expr.alias("prompt"), completion.alias("completion"), pl.lit(label).alias("label"),
            pl.col("title"), pl.col(f"key{suffix}").alias("key"),
            pl.col(f"finish_reason{suffix}").alias("finish_reason"),
            pl.col(f"completion_tokens{suffix}").alias("tokens"),
            *[pl.col(f"{c}{suffix}").alias(c) for c in judge_cols], *more,
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
    result.update(Manifest.read(out).splits)
    return result
