"""The job every tool does, written once by prefsynth's own code into a JSON file the peer scripts read.

For each of N titles (prefsynth.collect, the project's titles): the negative and the positive review prompt exactly
as prefsynth sends it, in two forms: `text`, the chat-templated prompt (system message, user turn, and the opening
words written into the assistant turn: `prefsynth.generate.prompt_for`), for a tool that posts text to
/v1/completions; and `messages`, the same conversation as chat messages ending in the assistant's opening, for a tool
that posts to /v1/chat/completions with `continue_final_message` (the server then renders the same text;
`same_tokens` checks that on the server). Also each review's seed (prefsynth's per-request seed), the neutral dataset
prompt stored in the `prompt` column, and the title's split (prefsynth's `assign_splits`).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefsynth.build import BuildConfig, assign_splits
from prefsynth.collect import CollectConfig, collect
from prefsynth.engines.base import Backend
from prefsynth.engines.light_tokenizer import LightTokenizer
from prefsynth.generate import GenerateConfig, generation_key, prompt_for, request_seed
from prefsynth.model import resolve_model
from prefsynth.prompts import POLARITIES, PromptConfig, Templates

# Sent with every chat request: continue the assistant's opening instead of starting a new turn (vLLM's option).
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


class _Chat:
    """Just enough of a prefsynth engine for `prompt_for`: the tokenizer's chat template and the generate config."""

    chat = Backend.chat

    def __init__(self, tokenizer: LightTokenizer, cfg: GenerateConfig):
        self.tokenizer, self.cfg = tokenizer, cfg


def titles_for(n: int, titles_file: str | None) -> list[str]:
    """The N titles `prefsynth build --n N [--titles FILE]` takes (a UserError for a bad file or N)."""
    return collect(CollectConfig(n=n) if titles_file is None else CollectConfig(n=n, source=titles_file)).titles


# The sampling every tool uses: plain temperature sampling, as the peers' clients send it (no stop strings or
# repetition penalty, which prefsynth's defaults add).
PEER_SAMPLING = {"temperature": 0.7, "top_p": 0.95, "repetition_penalty": 1.0, "stop": []}


def make_job(titles: list[str], max_tokens: int, model_id: str, base_url: str) -> dict:
    cfg = GenerateConfig(model="bundled", max_tokens=max_tokens, candidates=1, **PEER_SAMPLING)
    model = resolve_model(cfg.model)
    templates = Templates(PromptConfig())
    splits = assign_splits(titles, BuildConfig())
    chat = _Chat(LightTokenizer(Path(model.path)), cfg)
    system = cfg.system_prompt if cfg.system_prompt is not None else templates.system()
    rows = []
    for title in titles:
        row = {"title": title, "split": splits[title], "prompt": templates.dataset(title)}
        for polarity in POLARITIES:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": templates.generation(title, polarity)},
                {"role": "assistant", "content": cfg.opening}]
            row[polarity] = {"text": prompt_for(chat, templates, cfg, title, polarity), "messages": messages,
                             "seed": request_seed(generation_key(model, templates, cfg, title, polarity))}
        rows.append(row)
    return {"model": model_id, "base_url": base_url.rstrip("/") + "/v1", "opening": cfg.opening,
            "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": max_tokens},
            "fixed_seed": cfg.seed, "rows": rows}


def same_tokens(server: str, job: dict) -> bool:
    """Whether the server tokenizes the first review's chat messages (continued) exactly as its templated text."""
    import httpx

    review = job["rows"][0]["negative"]
    as_text = httpx.post(f"{server}/tokenize", json={"model": job["model"], "prompt": review["text"]}, timeout=30)
    as_chat = httpx.post(f"{server}/tokenize", json={"model": job["model"], "messages": review["messages"], **CONTINUE},
                         timeout=30)
    return as_text.raise_for_status().json()["tokens"] == as_chat.raise_for_status().json()["tokens"]


def write(job: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(job, ensure_ascii=False))
    return path
