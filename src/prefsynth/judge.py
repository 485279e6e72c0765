"""Stage 4, judge: how negative is each review, by two independent signals.

- LLM judge: the model reads a short classification prompt (`prompts/judge.j2`) and we take the log-probabilities
  of the label words ("negative"/"positive", in the spellings the tokenizer has) for the first answer token. No
  text is sampled; P(negative) = mass(negative) / (mass(negative) + mass(positive)). It runs on the engine that
  generated the reviews (`get_backend` returns the loaded one), so the model is loaded once per run.
- Lexicon judge: VADER's compound score, mapped to [0, 1] negativity. Cheap, and independent of the generator.

Both are cached by (review key, judge fingerprint) like generations, so reruns never judge twice.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import polars as pl

from prefsynth.cache import Store, make_key
from prefsynth.config import opt
from prefsynth.generate import GenerateConfig, Generations, cache_root, get_backend
from prefsynth.prompts import Templates

NEGATIVE_WORDS = ("negative", "Negative", "NEGATIVE")
POSITIVE_WORDS = ("positive", "Positive", "POSITIVE")

JUDGE_SCHEMA: dict[str, pl.DataType] = {"gen_key": pl.Utf8, "judge_llm": pl.Float64, "judge_lexicon": pl.Float64}


@dataclass
class JudgeConfig:
    enabled: bool = opt(True, "score every review's polarity (needed for the noise rate and consistency filter)",
                        alias="judge")
    llm: bool = opt(True, "use the LLM judge (label-word log-probabilities on the generating model)")
    lexicon: bool = opt(True, "use the VADER lexicon judge")
    llm_weight: float = opt(0.5, "weight of the LLM judge in the combined score (lexicon gets the rest)")


@dataclass
class Judged:
    scores: pl.DataFrame  # key, judge_llm, judge_lexicon, judge_negative
    stats: dict[str, float] = field(default_factory=dict)


def label_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """First token of each spelling of the two label words, with and without a leading space."""
    def first_ids(words: tuple[str, ...]) -> list[int]:
        ids = []
        for w in words:
            for variant in (w, " " + w):
                toks = tokenizer.encode(variant, add_special_tokens=False)
                if toks and toks[0] not in ids:
                    ids.append(toks[0])
        return ids

    neg, pos = first_ids(NEGATIVE_WORDS), first_ids(POSITIVE_WORDS)
    shared = set(neg) & set(pos)  # a token both words start with says nothing about polarity
    return [t for t in neg if t not in shared], [t for t in pos if t not in shared]


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m if m == float("-inf") else m + math.log(sum(math.exp(x - m) for x in xs))


def llm_scores(backend, templates: Templates, reviews: list[str]) -> list[float]:
    neg, pos = label_token_ids(backend.tokenizer)
    if not neg or not pos:
        return [0.5] * len(reviews)
    prompts = [backend.chat(templates.judge(r)) for r in reviews]
    rows = backend.label_logprobs(prompts, neg + pos)
    out = []
    for lps in rows:
        ln, lp = _logsumexp(lps[:len(neg)]), _logsumexp(lps[len(neg):])
        out.append(0.5 if ln == lp == float("-inf") else 1.0 / (1.0 + math.exp(min(lp - ln, 700.0))))
    return out


_VADER = None


def lexicon_scores(reviews: list[str]) -> list[float]:
    global _VADER
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
    return [(1.0 - _VADER.polarity_scores(r)["compound"]) / 2.0 for r in reviews]


def combine(llm: pl.Expr, lex: pl.Expr, cfg: JudgeConfig) -> pl.Expr:
    if cfg.llm and cfg.lexicon:
        return cfg.llm_weight * llm + (1 - cfg.llm_weight) * lex
    return llm if cfg.llm else lex


def judge(gens: Generations, templates: Templates, cfg: JudgeConfig, gen_cfg: GenerateConfig) -> Judged:
    t0 = time.time()
    fingerprint = make_key(model=gens.model.fingerprint, templates=templates.hash, llm=cfg.llm, lexicon=cfg.lexicon,
                           words=[NEGATIVE_WORDS, POSITIVE_WORDS], system=gen_cfg.system_prompt)
    store = Store(cache_root(gen_cfg), "judgements", JUDGE_SCHEMA)
    keys = gens.rows.get_column("key").to_list()
    texts = gens.rows.get_column("text").str.strip_chars().to_list()
    jkeys = [make_key(gen=k, judge=fingerprint) for k in keys]
    have = store.load(set(jkeys))
    have_keys = set(have.get_column("key").to_list())
    todo = [i for i, jk in enumerate(jkeys) if jk not in have_keys]
    stats: dict[str, float] = {"reviews": len(keys), "judged": len(todo), "reused": len(keys) - len(todo)}
    t_llm = 0.0
    if todo:
        reviews = [texts[i] for i in todo]
        llm = [float("nan")] * len(todo)
        if cfg.llm:
            t1 = time.time()
            llm = llm_scores(get_backend(gens.model, gen_cfg), templates, reviews)
            t_llm = time.time() - t1
        lex = lexicon_scores(reviews) if cfg.lexicon else [float("nan")] * len(todo)
        store.append([{"key": jkeys[i], "gen_key": keys[i], "judge_llm": llm[j], "judge_lexicon": lex[j]}
                      for j, i in enumerate(todo)])
        have = store.load(set(jkeys))
    scores = (have.select("gen_key", "judge_llm", "judge_lexicon").rename({"gen_key": "key"})
              .with_columns(combine(pl.col("judge_llm"), pl.col("judge_lexicon"), cfg).alias("judge_negative")))
    stats.update(llm_seconds=round(t_llm, 2), seconds=round(time.time() - t0, 2))
    return Judged(scores, stats)
