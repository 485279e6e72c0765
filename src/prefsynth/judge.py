"""Stage 4, judge: how negative is each review, by two independent signals.

- LLM judge: the model reads a short classification prompt (`prompts/judge.j2`) and we take the log-probabilities
  of the label words ("negative"/"positive", in the spellings the tokenizer has) for the first answer token. No
  text is sampled; P(negative) = mass(negative) / (mass(negative) + mass(positive)). It runs on the engine that
  generated the reviews (the caller hands it over in `JudgeSetup`), so the model is loaded once per run; a writer
  prefsynth fine-tuned is judged by the model it was trained from instead (`judging_model`).
- Lexicon judge: VADER's compound score, mapped to [0, 1] negativity. Cheap, and independent of the generator.

Both are cached by (review key, judge fingerprint) like generations, so reruns never judge twice.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from prefsynth import faults
from prefsynth.cache import make_key
from prefsynth.config import opt
from prefsynth.engines import Backend, get_backend
from prefsynth.generate import Generations, cache_root
from prefsynth.model import ModelRef, resolve_model
from prefsynth.polarity_head import PolarityHead, answer_token_ids
from prefsynth.prompts import Templates
from prefsynth.shared_store import Tiered
from prefsynth.text_judge import TextJudge

if TYPE_CHECKING:
    from prefsynth.generate import GenerateConfig

NEGATIVE_WORDS = ("negative", "Negative", "NEGATIVE")
POSITIVE_WORDS = ("positive", "Positive", "POSITIVE")

JUDGE_SCHEMA: dict[str, pl.DataType] = {"gen_key": pl.Utf8, "judge_llm": pl.Float64, "judge_lexicon": pl.Float64,
                                         "judge_head": pl.Float64}


@dataclass
class JudgeConfig:
    enabled: bool = opt(True, "score every review's polarity (needed for the noise rate and consistency filter)",
                        alias="judge")
    llm: bool = opt(True, "use the LLM judge (label-word log-probabilities on the judging model, --judge.model)")
    lexicon: bool = opt(True, "use the VADER lexicon judge")
    llm_weight: float = opt(0.5, "weight of the LLM judge in the combined score (lexicon gets the rest)")
    calibrate: bool = opt(True, "remove the LLM judge's label prior, measured on content-free reviews")
    head: bool = opt(True, "score with the polarity head trained on real reviews (data/judge/polarity_head.json) "
                           "when it was trained for this model and judge template; else LLM + lexicon")
    skip_rejected: bool = opt(True, "do not judge texts that a filter or validity rule already rejected (the build "
                                    "drops them whatever their polarity); false judges every text")
    max_words: int = opt(160, "a longer review is judged on an excerpt of this many words: its opening, the "
                              "sentences with verdict words, and its end")
    text: bool = opt(True, "also score with the text judge (TF-IDF ridge fitted on 4,870 real ICLR reviews, "
                           "data/judge/text_judge.json.gz; independent of the generating model) and average it in")
    text_weight: float = opt(0.5, "weight of the text judge in the verdict (the head, or LLM + lexicon, gets the rest)")
    text_sure: float = opt(0.4, "a review the text judge alone is this sure of (|P(negative) - 0.5| >= this) skips the "
                                "LLM pass and takes the text judge's verdict; 0.5: every review gets the LLM pass")
    model: str | None = opt(None, "model the LLM judge and the head run on ('bundled', a folder or a Hub id); None: "
                                  "the generating model, or for the writer the bundled model it was trained from")
    engine_url: str | None = opt(None, "a `prefsynth engine` server holding --judge.model, when that differs from "
                                       "the generating model; None: loaded in this process")


@dataclass(frozen=True)
class JudgeSetup:
    """What the judge stage takes from generation, explicitly: where judgements are cached (beside the
    generations), the system message every judge prompt carries (part of the judgement key), how often the journal
    fsyncs, and the generating engine, which `engine()` loads only when a review still needs the LLM judge."""

    cache: Path
    system_prompt: str | None
    fsync_seconds: float
    engine: Callable[[], Backend]
    store: str | None = None  # the shared store behind the cache (generate.store)
    model: ModelRef | None = None  # the judging model (None: the model that generated the reviews)

    @classmethod
    def of(cls, model: ModelRef, gen: GenerateConfig, cfg: JudgeConfig | None = None) -> JudgeSetup:
        """The setup for reviews `gen` generated with `model`: the same cache, and the engine of the judging model
        from the registry (the loaded one, when generation loaded it and it is the same model)."""
        judge_model, engine_cfg = judging_model(model, gen, cfg or JudgeConfig())
        return cls(cache_root(gen), gen.system_prompt, gen.fsync_seconds,
                   functools.partial(get_backend, judge_model, engine_cfg), gen.store, judge_model)


def judging_model(gen_model: ModelRef, gen: GenerateConfig, cfg: JudgeConfig) -> tuple[ModelRef, GenerateConfig]:
    """Which model judges, and the engine settings to load it with. By default the generating model, except a model
    prefsynth fine-tuned (the writer): the model it was trained from judges it, since the polarity head was fitted
    on that one, and a writer should not grade its own reviews. A judge other than the generator runs in this
    process unless --judge.engine_url names a server holding it."""
    name = cfg.model or gen_model.trained_from
    if not name:
        return gen_model, gen
    ref = resolve_model(name)
    if ref.fingerprint == gen_model.fingerprint:
        return gen_model, gen
    return ref, dataclasses.replace(gen, model=name, engine_url=cfg.engine_url)


@dataclass
class Judged:
    scores: pl.DataFrame  # key, judge_llm, judge_lexicon, judge_negative
    stats: dict[str, float] = field(default_factory=dict)


def label_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """First token of each spelling of the two label words, with and without a leading space."""
    neg, pos = answer_token_ids(tokenizer, NEGATIVE_WORDS), answer_token_ids(tokenizer, POSITIVE_WORDS)
    shared = set(neg) & set(pos)  # a token both words start with says nothing about polarity
    return [t for t in neg if t not in shared], [t for t in pos if t not in shared]


# Written out, not scipy.special.logsumexp: scipy is not in this project's environment (checked: .venv has numpy,
# not scipy), and a new dependency for three lines is not worth it.
def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m if m == float("-inf") else m + math.log(sum(math.exp(x - m) for x in xs))


# Content-free inputs for calibration ("Calibrate Before Use", Zhao et al. 2021): a small model prefers one label
# word whatever the review says; its log-odds on reviews that say nothing is that prior, and we subtract it.
CONTENT_FREE = ("N/A", "", "[review]")


def _log_odds(lps: list[float], n_neg: int) -> float:
    """log P(negative words) - log P(positive words), clipped so that -inf on one side stays finite."""
    ln, lp = _logsumexp(lps[:n_neg]), _logsumexp(lps[n_neg:])
    if ln == lp == float("-inf"):
        return 0.0
    return max(-50.0, min(50.0, ln - lp))


def _label_bias(backend, templates: Templates, ids: list[int], n_neg: int, n_labels: int) -> float:
    """The LLM judge's label prior: its mean log-odds on content-free reviews (`ids` starts with the label tokens,
    negative first; only those `n_labels` count)."""
    probes = [backend.chat(templates.judge(r)) for r in CONTENT_FREE]
    return sum(_log_odds(lps[:n_labels], n_neg) for _, lps in backend.label_logprobs(probes, ids)) / len(probes)


def _p_negative(lps: list[float], n_neg: int, n_labels: int, bias: float) -> float:
    """Calibrated P(negative) from the label tokens' log-probabilities (the first `n_labels` of `lps`)."""
    return 1.0 / (1.0 + math.exp(-(_log_odds(lps[:n_labels], n_neg) - bias)))


def llm_scores_iter(backend, templates: Templates, reviews: list[str],
                    calibrate: bool = True) -> Iterator[tuple[int, float]]:
    """(index, calibrated P(negative)) for each review, streamed as the engine finishes them."""
    neg, pos = label_token_ids(backend.tokenizer)
    if not neg or not pos:
        yield from ((i, 0.5) for i in range(len(reviews)))
        return
    ids = neg + pos
    bias = _label_bias(backend, templates, ids, len(neg), len(ids)) if calibrate else 0.0
    prompts = [backend.chat(templates.judge(r)) for r in reviews]
    for i, lps in backend.label_logprobs(prompts, ids):
        yield i, _p_negative(lps, len(neg), len(ids), bias)


def llm_scores(backend, templates: Templates, reviews: list[str], calibrate: bool = True) -> list[float]:
    out = [0.5] * len(reviews)
    for i, p in llm_scores_iter(backend, templates, reviews, calibrate):
        out[i] = p
    return out


# Peer-review vocabulary VADER lacks or reads in its everyday sense ("rigorous" is -1.1 there: harsh; in a review it
# is praise). Written for prefsynth from common reviewing language; VADER's scale is -4..+4.
REVIEW_LEXICON = {
    "unconvincing": -2.0, "incremental": -1.2, "marginal": -1.5, "marginally": -0.8, "lacks": -1.5,
    "lacking": -1.5, "unjustified": -2.0, "insufficient": -1.8, "underwhelming": -2.0, "sloppy": -2.0,
    "shallow": -1.5, "unoriginal": -2.0, "outdated": -1.5, "poorly": -1.8, "superficial": -1.5, "contrived": -1.5,
    "inconclusive": -1.5, "derivative": -1.5, "overclaims": -2.0, "overclaim": -2.0, "overstated": -1.8,
    "handwavy": -1.8, "hand-wavy": -1.8, "unsubstantiated": -2.0, "irreproducible": -2.0, "unreproducible": -2.0,
    "cherry-picked": -2.0, "flimsy": -1.8, "muddled": -1.6, "convoluted": -1.5, "unclear": -1.3, "vague": -1.2,
    "trivial": -1.3, "reject": -2.2, "rejection": -2.0, "weak": -1.9, "insignificant": -1.8, "unmotivated": -1.6,
    "rigorous": 1.8, "thorough": 1.8, "thoroughly": 1.5, "insightful": 2.2, "well-written": 2.0,
    "well-motivated": 1.8, "principled": 1.5, "sound": 1.2, "impactful": 2.0, "reproducible": 1.2,
    "compelling": 2.0, "solid": 1.5, "novel": 1.5, "convincing": 1.8, "accept": 2.0, "elegant": 2.1,
    "significant": 1.2, "state-of-the-art": 1.2, "careful": 1.2, "carefully": 1.2, "clarity": 1.5,
}

_VADER = None


def _vader():
    global _VADER
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
        _VADER.lexicon.update(REVIEW_LEXICON)
    return _VADER


def lexicon_scores(reviews: list[str]) -> list[float]:
    return [(1.0 - _vader().polarity_scores(r)["compound"]) / 2.0 for r in reviews]


def combined_score(llm, lex, llm_weight: float):
    """The combined judge score (floats or polars expressions): the LLM judge weighs `llm_weight`, the lexicon the
    rest. The one place this formula is written: the judge stage, its evaluation and training's evaluation use it."""
    return llm_weight * llm + (1 - llm_weight) * lex


def combine(llm: pl.Expr, lex: pl.Expr, cfg: JudgeConfig) -> pl.Expr:
    if cfg.llm and cfg.lexicon:
        return combined_score(llm, lex, cfg.llm_weight)
    return llm if cfg.llm else lex


_VERDICT_CUES = re.compile(
    r"(?i)\b(?:overall|in summary|to summari[sz]e|in conclusion|recommend\w*|accept\w*|reject\w*|rating|score"
    r"|borderline|contributions?|novel\w*|limited|marginal\w*|incremental|well[- ]written|clearly written"
    r"|interesting|convinc\w*|significan\w*|strong|weak\w*|publication|i think|i believe|i like|enjoyed"
    r"|concerns?)\b")


def excerpt(review: str, max_words: int) -> str:
    """What the judge reads of a long review: its first sentence, the last sentences that carry verdict words, and
    its last two sentences, at most `max_words` words (a real review runs to 500+; its verdict is rarely in the
    middle of the method discussion). Reviews within the limit are read whole."""
    if len(review.split()) <= max_words:
        return review
    sentences = [x for x in re.split(r"(?<=[.!?])\s+", review) if x.strip()]
    if len(sentences) <= 3:
        words = review.split()
        return " ".join(words[: max_words // 3] + ["..."] + words[-(max_words - max_words // 3):])
    cues = [x for x in sentences[1:-2] if _VERDICT_CUES.search(x)][-5:]
    words = " ".join([sentences[0], *cues, *sentences[-2:]]).split()
    if len(words) > max_words:
        words = words[: max_words // 3] + ["..."] + words[-(max_words - max_words // 3):]
    return " ".join(words)


def lexicon_features(reviews: list[str]) -> list[tuple[float, float, float]]:
    """VADER's negative, positive and compound scores (with the review vocabulary above) per review."""
    vader = _vader()
    out = []
    for r in reviews:
        s = vader.polarity_scores(r)
        out.append((s["neg"], s["pos"], s["compound"]))
    return out


def active_text_judge(cfg: JudgeConfig) -> TextJudge | None:
    return TextJudge.load() if cfg.text else None


def text_is_sure(p_text, sure: float):
    """Where the text judge alone decides (floats or polars expressions): it is at least `sure` away from 0.5. At
    0.4 no verdict of the LLM-based judges changed on 4,839 generated reviews (docs/quality.md); the LLM pass is the
    judge's whole cost."""
    return abs(p_text - 0.5) >= sure


def cascade(base, text, weight: float, sure: float):
    """The verdict when the text judge decides alone where it is sure, else the average (floats or polars
    expressions): the one place this rule is written, for the judge stage and its evaluation."""
    if isinstance(text, pl.Expr):
        return pl.when(text_is_sure(text, sure)).then(text).otherwise(with_text(base, text, weight))
    return text if text_is_sure(text, sure) else with_text(base, text, weight)


def with_text(base, text, weight: float):
    """The verdict with the text judge averaged in (floats or polars expressions): the one place this is written."""
    return weight * text + (1 - weight) * base


def active_head(model: ModelRef, templates: Templates, cfg: JudgeConfig) -> PolarityHead | None:
    """The trained head, when it is on and was trained for this model and judge template."""
    if not (cfg.head and cfg.llm and cfg.lexicon):
        return None
    head = PolarityHead.load()
    return head if head is not None and head.fits(model.fingerprint, templates.hash_for("judge")) else None


def score_reviews(backend, templates: Templates, reviews: list[str], cfg: JudgeConfig,
                  head: PolarityHead | None) -> Iterator[tuple[int, float, float, float, list[float]]]:
    """(index, LLM P(negative), lexicon negativity, head P(negative) or nan, log-probabilities of the answer
    words) per review, streamed as the engine finishes them. One forward pass per review serves both LLM judges:
    the label words and the head's answer words are read at the same answer position."""
    texts = [excerpt(r, cfg.max_words) for r in reviews]
    lexf = lexicon_features(texts)
    lex = [(1.0 - c) / 2.0 for _, _, c in lexf]
    if backend is None or not cfg.llm:
        for i in range(len(texts)):
            yield i, float("nan"), lex[i] if cfg.lexicon else float("nan"), float("nan"), []
        return
    neg, pos = label_token_ids(backend.tokenizer)
    answer = head.token_ids if head else answer_token_ids(backend.tokenizer)
    extra = [t for t in answer if t not in neg + pos]
    ids = neg + pos + extra
    where = {t: k for k, t in enumerate(ids)}
    n_labels = len(neg) + len(pos)  # the head's extra answer words follow; they are no label of the LLM judge
    bias = _label_bias(backend, templates, ids, len(neg), n_labels) if cfg.calibrate and neg and pos else 0.0
    prompts = [backend.chat(templates.judge(t)) for t in texts]
    for i, lps in backend.label_logprobs(prompts, ids):
        llm = _p_negative(lps, len(neg), n_labels, bias) if neg and pos else 0.5
        h = float("nan")
        answer_lps = [lps[where[t]] for t in answer]
        if head is not None:
            h = float(head.predict(np.array([answer_lps]), np.array([lexf[i]]))[0])
        yield i, llm, lex[i] if cfg.lexicon else float("nan"), h, answer_lps


def judge(gens: Generations, templates: Templates, cfg: JudgeConfig, setup: JudgeSetup) -> Judged:
    t0 = time.time()
    model = setup.model or gens.model
    head = active_head(model, templates, cfg)
    parts: dict[str, object] = dict(model=model.fingerprint, templates=templates.hash_for("judge"), llm=cfg.llm,
                                    lexicon=cfg.lexicon, words=[NEGATIVE_WORDS, POSITIVE_WORDS],
                                    system=setup.system_prompt, calibrate=[cfg.calibrate, CONTENT_FREE])
    if head is not None:  # judgements made without a head keep their keys
        # "labels": the LLM judge's log-odds over the label tokens only (a first version also counted the head's
        # extra answer words as positive mass; its cached scores must not be reused)
        parts.update(head=head.fingerprint, max_words=cfg.max_words, llm_odds="labels")
    fingerprint = make_key(**parts)
    store = Tiered.open(setup.cache, "judgements", JUDGE_SCHEMA, setup.store)
    store.sweep()
    keys = gens.rows.get_column("key").to_list()
    texts = gens.rows.get_column("text").str.strip_chars().to_list()
    text = active_text_judge(cfg)
    p_text = text.p_negative(texts) if text is not None else []  # microseconds a review: never cached
    sure = cfg.text_sure if text is not None and cfg.llm and cfg.text_sure < 0.5 else None
    decided = [i for i, p in enumerate(p_text) if sure is not None and text_is_sure(p, sure)]
    jkeys = [make_key(gen=k, judge=fingerprint) for k in keys]
    ask = sorted(set(range(len(keys))) - set(decided))
    have = store.load({jkeys[i] for i in ask})
    have_keys = set(have.get_column("key").to_list())
    todo = [i for i in ask if jkeys[i] not in have_keys]
    stats: dict[str, object] = {"reviews": len(keys), "judged": len(todo), "reused": len(ask) - len(todo),
                                "judge_model": model.name, "judge_model_fingerprint": model.fingerprint,
                                "judge": f"head {head.fingerprint}" if head else
                                ("llm+lexicon" if cfg.llm and cfg.lexicon else "llm" if cfg.llm else "lexicon")}
    t_llm = 0.0
    if todo:
        t1 = time.time()
        backend = setup.engine() if cfg.llm else None
        with store.journal(setup.fsync_seconds) as journal:
            for j, llm, lex, h, _ in score_reviews(backend, templates, [texts[i] for i in todo], cfg, head):
                faults.point("judge.scored")
                i = todo[j]
                journal.add({"key": jkeys[i], "gen_key": keys[i], "judge_llm": llm, "judge_lexicon": lex,
                             "judge_head": h})
        t_llm = time.time() - t1
        have = store.load({jkeys[i] for i in ask})
    scores = have.select("gen_key", "judge_llm", "judge_lexicon", "judge_head").rename({"gen_key": "key"})
    if decided:  # the text judge decided these alone: no LLM pass, so no LLM or head score
        lex = lexicon_scores([excerpt(texts[i], cfg.max_words) for i in decided]) if cfg.lexicon else None
        nan = [float("nan")] * len(decided)
        scores = pl.concat([scores, pl.DataFrame({"key": [keys[i] for i in decided], "judge_llm": nan,
                                                  "judge_lexicon": lex or nan, "judge_head": nan},
                                                 schema=scores.schema)])
    negative = pl.col("judge_head") if head is not None else combine(pl.col("judge_llm"), pl.col("judge_lexicon"), cfg)
    if text is not None:
        by_key = dict(zip(keys, p_text))
        scores = scores.with_columns(pl.Series("judge_text", [by_key[k] for k in scores["key"]], dtype=pl.Float64))
        stats["judge"] = f"{stats['judge']} + text {text.fingerprint}"
        if sure is None:
            negative = with_text(negative, pl.col("judge_text"), cfg.text_weight)
        else:
            negative = cascade(negative, pl.col("judge_text"), cfg.text_weight, sure)
            stats["judge"] = f"{stats['judge']} sure {sure:g}"
            stats["text_decided"] = len(decided)
    scores = scores.with_columns(negative.alias("judge_negative"))
    if head is None:
        scores = scores.drop("judge_head")
    stats.update(llm_seconds=round(t_llm, 2), seconds=round(time.time() - t0, 2))
    return Judged(scores, stats)
