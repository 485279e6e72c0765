"""Can the writer's own log-probabilities tell a good review from a bad one? Measured on hand-labelled texts.

A candidate filter that costs nothing would use the log-probability the writer gave its own sampled tokens (vLLM
returns it at generation time); the DPO "implicit reward" (polished writer minus the SFT writer it was trained from)
needs a second model pass. This scores the labelled texts of the polished writer (texts of a test, in no training
file when they were read) under both models with vLLM and prints, per label file, the AUC of each signal for valid
and of the asked tone vs not (0.5: no signal; a filter needs far more than 0.7 to remove bad texts without good
ones).

    .venv/bin/python bench/logprob_signal.py                     # ~7-14 min on 2 cores (220 texts, 2 models)

The figures in docs/quality.md (bench/results/logprob_signal.txt) were measured with the first polish as `--polished
writer`, which wrote these texts; the second polish, the default since, was trained on them, so rerun with the first
polish's merged folder as --polished for the same measurement.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "tests" / "data" / f"{n}_labels.jsonl" for n in ("dpo_test", "opening_test")]


def auc(good: list[float], bad: list[float]) -> float:
    """P(a good text scores above a bad one), ties counted half."""
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return wins / (len(good) * len(bad)) if good and bad else float("nan")


def token_logprobs(model: str, rows: list[dict]) -> list[list[float]]:
    """Per review, the log-probability of each of its tokens after the exact generation prompt."""
    from vllm import SamplingParams, TokensPrompt

    from prefsynth.engines import close_backends
    from prefsynth.engines.registry import get_backend
    from prefsynth.generate import GenerateConfig
    from prefsynth.model import resolve_model
    from prefsynth.prompts import PromptConfig, Templates

    templates = Templates(PromptConfig())
    backend = get_backend(resolve_model(model), GenerateConfig())
    tok = backend.tokenizer
    prompts, starts = [], []
    for r in rows:
        messages = [{"role": "system", "content": templates.system()},
                    {"role": "user", "content": templates.generation(r["title"], r["polarity"])}]
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append(TokensPrompt(prompt_token_ids=tok.encode(prompt + r["review"], add_special_tokens=False)))
        starts.append(len(tok.encode(prompt, add_special_tokens=False)))
    outs = backend.llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0),
                                use_tqdm=False)
    close_backends()
    return [[o.prompt_logprobs[i][o.prompt_token_ids[i]].logprob for i in range(s, len(o.prompt_token_ids))]
            for o, s in zip(outs, starts)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--good", type=int, default=150, help="good texts sampled (all bad ones are kept)")
    p.add_argument("--model-tag", default="writer_dpo", help="score texts whose model tag contains this")
    p.add_argument("--polished", default="writer", help="the polished writer (a model name or merged folder)")
    a = p.parse_args()
    from prefsynth.cli import quiet_libraries

    quiet_libraries()
    rows = []
    for f in FILES:
        for line in f.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if a.model_tag in str(r.get("model") or ""):
                rows.append(r | {"file": f.name, "good": bool(r["valid"] and r["label"] == r["polarity"])})
    good = [r for r in rows if r["good"]]
    random.Random(0).shuffle(good)
    rows = [r for r in rows if not r["good"]] + good[:a.good]
    t0 = time.time()
    polished, sft = token_logprobs(a.polished, rows), token_logprobs("writer-sft", rows)
    signals = {
        "writer mean log-prob": [sum(x) / len(x) for x in polished],
        "writer total log-prob": [sum(x) for x in polished],
        "SFT writer mean log-prob": [sum(x) / len(x) for x in sft],
        "implicit reward (polished - SFT)": [sum(x) - sum(y) for x, y in zip(polished, sft)],
        "shorter text": [-len(x) for x in polished],
    }
    print(f"{len(rows)} labelled texts of the polished writer scored in {time.time() - t0:.0f} s")
    groups = [("all", lambda r: True)] + [(f.name, lambda r, n=f.name: r["file"] == n) for f in FILES]
    print(f"{'signal':<34}" + "".join(f"{g:>28}" for g, _ in groups))
    for name, values in signals.items():
        cells = []
        for _, keep in groups:
            g = [v for v, r in zip(values, rows) if keep(r) and r["good"]]
            b = [v for v, r in zip(values, rows) if keep(r) and not r["good"]]
            cells.append(f"AUC {auc(g, b):.2f} ({len(g)}/{len(b)})")
        print(f"{name:<34}" + "".join(f"{c:>28}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
