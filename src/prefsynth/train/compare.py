"""Base model vs tuned adapters on held-out titles, generated through vLLM and scored by judges that did not label
the training data.

Each adapter is merged into the base weights in a temporary folder (vLLM then loads it like any model folder), and
every model writes one review per title from the neutral dataset prompt, exactly as a user of the bot would prompt
it (prefsynth.generate with prompts.NEUTRAL: the generation cache keys them by the merged model's fingerprint, so a
rerun regenerates nothing). The reviews are scored by
- the polarity head (a classifier fitted on real peer reviews; its features are the base model's answer
  log-probabilities and VADER), with the base model as the engine for every side: a tuned judge would grade its own
  work;
- the lexicon (VADER) on its own;
- the validity rules and text filters the build applies (a tuned model that writes "Here's a harsh review" has
  learnt the leak, not the task).
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass

import polars as pl

from prefsynth.build import BuildConfig, flag_all
from prefsynth.engines import close_backends
from prefsynth.errors import UserError
from prefsynth.generate import GenerateConfig, Generations, generate
from prefsynth.judge import JudgeConfig, JudgeSetup, judge
from prefsynth.model import ModelRef, resolve_model
from prefsynth.prompts import NEUTRAL, Templates
from prefsynth.train.evaluate import sign_test

# The head needs the LLM pass (its features) and the lexicon; judge_negative is then the head's P(negative).
EVAL_JUDGE = JudgeConfig(llm=True, lexicon=True, head=True, text=False, skip_rejected=False)


@dataclass
class Written:
    """One model's reviews of the evaluation titles, scored."""

    name: str
    rows: pl.DataFrame  # title, text, negative (head), lexicon, valid, reasons
    seconds: float


def write_reviews(name: str, model_path: str, titles: list[str], templates: Templates, gen: GenerateConfig,
                  base: ModelRef) -> Written:
    """`model_path` writes one review per title from the dataset prompt (vLLM); judged and checked for validity."""
    import time

    t0 = time.time()
    cfg = dataclasses.replace(gen, model=model_path, candidates=1)
    gens = generate(titles, templates, cfg, candidate=0, polarities=(NEUTRAL,))
    if cfg.model != base.path:
        close_backends()  # free this model's engine; the judge runs on the base model
    base_gen = dataclasses.replace(gen, model=base.path)
    # Judged as texts the base model reads (its engine, its head): whoever wrote them.
    judged = judge(Generations(gens.rows, base, gens.stats), templates, EVAL_JUDGE, JudgeSetup.of(base, base_gen))
    if not str(judged.stats.get("judge", "")).startswith("head "):
        raise UserError(f"the polarity head does not fit {base.name} (data/judge/polarity_head.json was trained "
                        f"for another model or judge prompt): the comparison needs it")
    flagged = flag_all(gens.rows, templates, BuildConfig(truncated="keep"))
    reasons = [c for c in flagged.columns if c.startswith("bad_")]
    rows = (flagged.join(judged.scores, on="key", how="left")
            .select("title", pl.col("review").alias("text"), pl.col("judge_negative").alias("negative"),
                    pl.col("judge_lexicon").alias("lexicon"), (~pl.col("bad")).alias("valid"),
                    pl.concat_list([pl.when(pl.col(c)).then(pl.lit(c[4:])) for c in reasons])
                    .list.drop_nulls().alias("reasons"))
            .sort("title"))
    return Written(name, rows, round(time.time() - t0, 1))


def compare(base: Written, tuned: Written, target: str = "negative") -> dict:
    """Negativity, validity and the tuned-vs-base win rate (two-sided sign test), per judge."""
    b = base.rows.sort("title")
    t = tuned.rows.sort("title")
    n = b.height
    sign = 1.0 if target == "negative" else -1.0

    def rate(vals) -> float:
        return round(sum((v > 0.5) == (sign > 0) for v in vals) / n, 4) if n else 0.0

    out: dict = {"titles": n, "valid_base": round(float(b.get_column("valid").mean() or 0.0), 4),
                 "valid_tuned": round(float(t.get_column("valid").mean() or 0.0), 4)}
    for col in ("negative", "lexicon"):
        bv, tv = b.get_column(col).fill_nan(0.5).fill_null(0.5).to_list(), t.get_column(col).fill_nan(0.5) \
            .fill_null(0.5).to_list()
        won = sum(sign * (y - x) > 0 for x, y in zip(bv, tv))
        lost = sum(sign * (y - x) < 0 for x, y in zip(bv, tv))
        key = "head" if col == "negative" else "lexicon"
        out[key] = {"rate_base": rate(bv), "rate_tuned": rate(tv), "wins": won, "losses": lost,
                    "ties": n - won - lost, "p": sign_test(won, lost)}
    valid_neg = [v and x > 0.5 for v, x in zip(t.get_column("valid"), t.get_column("negative").fill_nan(0.5))]
    out["valid_and_target_tuned"] = round(sum(valid_neg) / n, 4) if n else 0.0
    out["mean_words_tuned"] = round(statistics.fmean(len(x.split()) for x in t.get_column("text")), 1) if n else 0.0
    return out


def held_out_titles(all_titles: list[str], used: set[str], n: int) -> list[str]:
    """The first `n` titles of the list that no dataset was built from."""
    return [x for x in all_titles if x not in used][:n]


def base_model(name: str = "bundled") -> ModelRef:
    return resolve_model(name)
