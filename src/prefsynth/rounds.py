"""Candidates where they are needed: generate and judge in rounds, one candidate index per round.

Round k samples candidate k (its own cache key and seed) only for the (title, polarity) reviews that no earlier
candidate got right: every filter passed (text filters and validity rules, as the build applies them) and, with the
judge on, judged of its polarity. With n = 4 and a model that gets a review right half the time, this costs about
1.9 reviews per review instead of 4, and the result is exactly what generating all 4 and keeping the best would
give for the reviews that needed them. Each round is one generate and one judge stage run (Prefect tasks in a flow).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from prefsynth.build import BuildConfig, flag_all
from prefsynth.errors import UserError
from prefsynth.generate import GenerateConfig, Generations, generate
from prefsynth.judge import JudgeConfig, Judged, JudgeSetup, judge
from prefsynth.pairing import sampled_settled
from prefsynth.prompts import NEUTRAL, POLARITIES, Templates

Step = Callable[[Callable[..., Any], str], Callable[..., Any]]
# Makes every round of `titles` on workers before the build's own rounds read it back (prefsynth.fanout)
FanOut = Callable[[list[str]], dict]


def settled(gens: Generations, judged: Judged | None, templates: Templates, cfg: BuildConfig) -> set[tuple[str, str]]:
    """The (title, polarity) reviews that already have a candidate the build would keep (sampled pairing: the
    (title, NEUTRAL) whose candidates already make a pair)."""
    flagged = flag_all(gens.rows, templates, cfg)
    if cfg.pairing == "sampled":
        flagged = flagged.join(judged.scores.select("key", "judge_negative"), on="key", how="left")
        return {(t, NEUTRAL) for t in sampled_settled(flagged, cfg.chosen, cfg.min_margin)}
    ok = ~pl.col("bad") & ~pl.col("unfamiliar")  # an unfamiliar word: try another candidate (prefsynth.familiar)
    if judged is not None and cfg.inconsistent == "drop":  # the judge's verdict matters only where it drops
        flagged = flagged.join(judged.scores.select("key", "judge_negative"), on="key", how="left")
        side = pl.when(pl.col("polarity") == "negative").then(pl.col("judge_negative") > 0.5) \
            .otherwise(pl.col("judge_negative") < 0.5)
        ok = ok & side.fill_null(False)
    good = flagged.filter(ok).select("title", "polarity").unique()
    return set(good.iter_rows())


def _merge_stats(parts: list[dict]) -> dict:
    out: dict[str, Any] = {}
    for s in parts:
        for k, v in s.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
            else:
                out.setdefault(k, v)
    return out


def generate_judged(titles: list[str], templates: Templates, gen_cfg: GenerateConfig, judge_cfg: JudgeConfig,
                    build_cfg: BuildConfig, step: Step,
                    fan_out: FanOut | None = None) -> tuple[Generations, Judged | None]:
    polarities = (NEUTRAL,) if build_cfg.pairing == "sampled" else POLARITIES
    if build_cfg.pairing == "sampled" and not judge_cfg.enabled:
        raise UserError("build.pairing sampled needs the polarity judge (judge.enabled true): it is what decides "
                        "which sampled review is chosen and which rejected")
    # Sampled pairing draws both sides from one prompt: the same review budget per title as steered (2 x n).
    rounds = gen_cfg.candidates * len(POLARITIES) // len(polarities)
    need = {(t, p) for t in titles for p in polarities}
    gens_parts: list[Generations] = []
    judged_parts: list[Judged] = []
    per_round = []
    # Shard runs on workers make every round first; the steps below then read the store (generating only what a
    # shard could not know was needed).
    on_workers = fan_out(titles) if fan_out is not None else None
    for k in range(rounds):
        g = step(generate, "generate")(titles, templates, gen_cfg, candidate=k, need=need, polarities=polarities)
        gens_parts.append(g)
        j = None
        if judge_cfg.enabled:
            todo = worth_judging(gens_parts, g, templates, build_cfg) if judge_cfg.skip_rejected else g
            j = step(judge, "judge")(todo, templates, judge_cfg, JudgeSetup.of(g.model, gen_cfg, judge_cfg))
            j.stats["skipped_rejected"] = g.rows.height - todo.rows.height
            judged_parts.append(j)
        per_round.append(len(need))
        if k + 1 == rounds:
            break
        gens = _concat(gens_parts)
        judged = _concat_judged(judged_parts) if judged_parts else None
        need -= settled(gens, judged, templates, build_cfg)
        if not need:
            break
    gens = _concat(gens_parts)
    gens.stats["reviews_per_round"] = per_round
    if on_workers is not None:
        gens.stats["on_workers"] = on_workers
    return gens, (_concat_judged(judged_parts) if judged_parts else None)


def worth_judging(parts: list[Generations], new: Generations, templates: Templates,
                   cfg: BuildConfig) -> Generations:
    """The texts of this round that pass every filter (checked together with the earlier rounds, so a copy of an
    earlier text counts as one): judging costs about half of generating, and a rejected text is dropped anyway."""
    flagged = flag_all(_concat(parts).rows, templates, cfg)
    keep = flagged.filter(~pl.col("bad")).get_column("key")
    return Generations(new.rows.filter(pl.col("key").is_in(keep.implode())), new.model, new.stats, new.dtype)


def _concat(parts: list[Generations]) -> Generations:
    if len(parts) == 1:
        return parts[0]
    rows = pl.concat([p.rows for p in parts], how="vertical_relaxed")
    stats = _merge_stats([p.stats for p in parts])
    secs = stats.get("generate_seconds") or 0
    stats["tokens_per_second"] = round(stats.get("completion_tokens", 0) / secs, 1) if secs else 0.0
    return Generations(rows, parts[0].model, stats, next((p.dtype for p in parts if p.dtype), None))


def _concat_judged(parts: list[Judged]) -> Judged:
    if len(parts) == 1:
        return parts[0]
    scores = pl.concat([p.scores for p in parts], how="vertical_relaxed")
    return Judged(scores, _merge_stats([p.stats for p in parts]))


def round_rows(gens: Generations, judged: Judged | None, templates: Templates, cfg: BuildConfig,
               n: int) -> pl.DataFrame:
    """The rows the rounds above would have generated at n candidates, picked from a run that sampled all n for
    every review: candidate k only for the reviews no earlier candidate settled. Building from these keeps what a
    build with `generate.candidates n` keeps (a review settled by candidate 0 keeps candidate 0, however the later
    ones would have been judged)."""
    rows = gens.rows
    need = set(rows.select("title", "polarity").unique().iter_rows())
    parts = []
    for k in range(n):
        part = rows.filter(pl.col("candidate") == k).filter(
            pl.struct("title", "polarity").map_elements(lambda r: (r["title"], r["polarity"]) in need,
                                                        return_dtype=pl.Boolean))
        parts.append(part)
        need -= settled(Generations(pl.concat(parts), gens.model), judged, templates, cfg)
        if not need:
            break
    return pl.concat(parts)


def round_tokens(gens: Generations, judged: Judged | None, templates: Templates, cfg: BuildConfig, n: int) -> int:
    """Tokens the rounds above would generate at n candidates (`round_rows`)."""
    return int(round_rows(gens, judged, templates, cfg, n).get_column("completion_tokens").sum())
