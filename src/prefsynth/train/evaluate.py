"""Did the data do what it was built for? Base vs base + adapter, judged by the project's polarity judge.

Training curves alone cannot say that: a DPO run whose chosen and rejected rewards both sink can still have learnt
the preference, and a run with a textbook loss curve can have learnt nothing a reader would notice. So after
training, the base model and base + adapter each write a review for every validation title from the neutral
dataset prompt (same sampling seed per title), the polarity judge scores both (LLM judge on the base model, adapter
off, plus VADER, combined as the judge stage does), and the result gives each model's negativity rate and how often
the tuned review beats the base one.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from prefsynth.constants import PROMPTS_DIR
from prefsynth.train.config import TrainConfig
from prefsynth.train.data import Data


def evaluate(cfg: TrainConfig, data: Data, model, tokenizer, ref, log_line: Callable[[str], None]) -> dict:
    """Reviews for the validation titles from base and base + adapter, judged by the base model and VADER."""
    from prefsynth.engines import Request, TransformersBackend
    from prefsynth.filters import clean_review
    from prefsynth.generate import GenerateConfig, request_seed
    from prefsynth.judge import combined_score, lexicon_scores, llm_scores

    val = data.validation.unique("title", keep="first", maintain_order=True).sort("title")
    if val.height == 0 or cfg.eval.titles == 0:
        return {}
    val = val.head(cfg.eval.titles)
    titles = val.get_column("title").to_list()
    prompts = [render_prompt(tokenizer, p) for p in val.get_column("prompt").to_list()]
    prov = data.provenance
    chosen = prov.get("chosen", "negative")
    system_prompt = ((prov.get("config") or {}).get("generate") or {}).get("system_prompt")
    # The generate stage's transformers backend on the loaded PEFT model: same batched sampler with one seeded
    # generator per request, same label-logprob code for the judge.
    backend = TransformersBackend.from_loaded(ref, model, tokenizer, GenerateConfig(
        temperature=cfg.eval.temperature, top_p=cfg.eval.top_p, max_tokens=cfg.eval.max_tokens, seed=cfg.seed,
        batch_size=cfg.eval.batch_size, system_prompt=system_prompt,
        repetition_penalty=1.0, stop=[]))  # the policy's own sampling: what training changed, nothing steered
    # Same seed per title for both models: differences come from the adapter, not from the dice.
    requests = [Request(str(i), p, request_seed(f"{cfg.seed}\0{t}")) for i, (t, p) in enumerate(zip(titles, prompts))]
    was_training = model.training
    model.eval()
    t0 = time.time()
    texts: dict[str, list[str]] = {}
    for name, adapter in (("base", False), ("tuned", True)):
        log_line(f"evaluation: {name} model writes {len(requests)} reviews")
        with adapter_on(model, adapter):
            outs = {o.key: o.text for o in backend.generate(requests)}
        raw = [outs[r.key] for r in requests]
        texts[name] = pl.DataFrame({"t": raw}).select(clean_review(pl.col("t"))).to_series().to_list()
    jcfg = judge_config(data)
    templates = judge_templates(data)
    scores: dict[str, dict[str, list[float]]] = {}
    for name in ("base", "tuned"):
        s: dict[str, list[float]] = {}
        if jcfg.lexicon:
            s["lexicon"] = lexicon_scores(texts[name])
        if jcfg.llm:
            # The judge is the base model (adapter off) for both sides: a tuned judge would grade its own work.
            with adapter_on(model, False):
                s["llm"] = llm_scores(backend, templates, texts[name], calibrate=jcfg.calibrate)
        if "llm" in s and "lexicon" in s:
            s["combined"] = [combined_score(a, b, jcfg.llm_weight) for a, b in zip(s["llm"], s["lexicon"])]
        else:
            s["combined"] = s.get("llm") or s.get("lexicon") or [0.5] * len(titles)
        scores[name] = s
    if was_training:
        model.train()
    return summarize_evaluation(titles, texts, scores, chosen, round(time.time() - t0, 1))


def render_prompt(tokenizer, prompt) -> str:
    """The prompt exactly as TRL formatted it for training: chat template for messages, raw text otherwise."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def judge_config(data: Data):
    """The judge settings the dataset was built with (defaults for a manifest from another prefsynth version)."""
    from prefsynth.config import from_dict
    from prefsynth.judge import JudgeConfig

    try:
        return from_dict(JudgeConfig, (data.provenance.get("config") or {}).get("judge") or {})
    except (ValueError, TypeError):  # a manifest from another prefsynth version
        return JudgeConfig()


def judge_templates(data: Data):
    """The judge prompt the dataset was built with when its folder is still there, else the bundled one."""
    from prefsynth.prompts import PromptConfig, Templates

    stored = ((data.provenance.get("config") or {}).get("prompts") or {}).get("dir")
    folder = Path(stored) if stored and (Path(stored) / "judge.j2").exists() else PROMPTS_DIR
    return Templates(PromptConfig(dir=folder))


class adapter_on:  # noqa: N801 - used like a function: `with adapter_on(model, False):`
    """Context: run the PEFT model with its adapter on or off."""

    def __init__(self, model, on: bool):
        self.model, self.on, self.ctx = model, on, None

    def __enter__(self):
        if not self.on:
            self.ctx = self.model.disable_adapter()
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial test of wins vs losses at p = 1/2 (what scipy.stats.binomtest(wins, n) gives)."""
    # Hand-written: scipy is not in the project's environment (not a dependency, and nothing in the stack pulls it
    # in); at p = 1/2 the two-sided test is twice the smaller tail.
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def summarize_evaluation(titles: list[str], texts: dict[str, list[str]], scores: dict[str, dict[str, list[float]]],
                         chosen: str, seconds: float) -> dict:
    """Negativity rate of each model, and the share of titles where the tuned review is further toward the chosen
    polarity than the base one (ties count half)."""
    n = len(titles)
    sign = 1.0 if chosen == "negative" else -1.0

    def rate(vals):
        return round(sum(v > 0.5 for v in vals) / n, 4)

    base, tuned = scores["base"]["combined"], scores["tuned"]["combined"]
    won = sum(sign * (t - b) > 0 for b, t in zip(base, tuned))
    lost = sum(sign * (t - b) < 0 for b, t in zip(base, tuned))
    win_rate = (won + 0.5 * (n - won - lost)) / n
    out = {
        "titles": n, "chosen": chosen, "target": "negative" if chosen == "negative" else "positive",
        "negativity_rate_base": rate(base), "negativity_rate_tuned": rate(tuned),
        "mean_negativity_base": round(statistics.fmean(base), 4),
        "mean_negativity_tuned": round(statistics.fmean(tuned), 4),
        "win_rate": round(win_rate, 4), "wins": won, "losses": lost, "ties": n - won - lost,
        # Could a coin have done this? Two-sided sign test on wins vs losses (ties left out).
        "sign_test_p": round(sign_test(won, lost), 4),
        "by_judge": {j: {"negativity_rate_base": rate(scores["base"][j]),
                         "negativity_rate_tuned": rate(scores["tuned"][j]),
                         "mean_base": round(statistics.fmean(scores["base"][j]), 4),
                         "mean_tuned": round(statistics.fmean(scores["tuned"][j]), 4)}
                     for j in scores["base"] if j != "combined"},
        "mean_words_base": round(statistics.fmean(len(t.split()) for t in texts["base"]), 1),
        "mean_words_tuned": round(statistics.fmean(len(t.split()) for t in texts["tuned"]), 1),
        "seconds": seconds,
        "samples": [{"title": t, "base": b, "tuned": u, "score_base": round(sb, 3), "score_tuned": round(su, 3)}
                    for t, b, u, sb, su in zip(titles, texts["base"], texts["tuned"], base, tuned)],
    }
    return out
