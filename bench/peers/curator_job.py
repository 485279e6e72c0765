"""curator's side of `make bench-peers`: the job as a curator `LLM` subclass, run inside curator's own venv.

    CURATOR_CACHE_DIR=CACHE_DIR .state/peers/venvs/curator/bin/python bench/peers/curator_job.py JOB.json OUT_DIR

One row per review (title x polarity); `prompt()` returns the job's chat messages, which end in the assistant's
opening words, and the OpenAI backend posts them to the bench's vLLM server at /v1/chat/completions with vLLM's
`continue_final_message` (the server renders exactly the text prefsynth sends; the bench checks the tokens). Each
row carries prefsynth's per-review seed in curator's per-row `generation_params`. The responses are paired per title
(negative = chosen) and saved with the job's title -> split as a DatasetDict in OUT_DIR. Rerunning the same command
after a crash resumes from curator's cache (CURATOR_CACHE_DIR), as curator's docs say.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

# An offline machine: no telemetry, no Hub, litellm's bundled price map, and tiktoken (which curator's rate limiter
# uses to count tokens) reads the cl100k_base file litellm ships instead of downloading it.
os.environ.setdefault("TELEMETRY_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("CURATOR_DISABLE_RICH_DISPLAY", "1")
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(importlib.util.find_spec("litellm").origin).parent
                                                / "litellm_core_utils" / "tokenizers"))

from bespokelabs import curator  # noqa: E402
from datasets import Dataset, DatasetDict  # noqa: E402

CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


class Reviewer(curator.LLM):
    def prompt(self, row):
        return row["messages"]

    def parse(self, row, response):
        return {"title": row["title"], "polarity": row["polarity"], "review": row["opening"] + response}


if __name__ == "__main__":
    job_file, out_dir = sys.argv[1:3]
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    with open(job_file) as f:
        job = json.load(f)
    s = job["sampling"]
    rows = Dataset.from_list([
        {"title": r["title"], "polarity": p, "opening": job["opening"], "messages": r[p]["messages"],
         "generation_params": json.dumps({"seed": r[p]["seed"]})}  # curator reads per-row params as JSON text
        for r in job["rows"] for p in ("negative", "positive")])
    reviewer = Reviewer(
        model_name=job["model"], backend="openai",
        generation_params={"temperature": s["temperature"], "top_p": s["top_p"], "max_tokens": s["max_tokens"],
                           **CONTINUE},
        backend_params={"base_url": job["base_url"], "api_key": "EMPTY", "max_concurrent_requests": concurrency,
                        "max_requests_per_minute": 10**7, "max_tokens_per_minute": 10**10,
                        # a review cut at max_tokens is a review here, as in the other tools (curator's default
                        # retries "length" finishes as failures)
                        "invalid_finish_reasons": ["content_filter"]})
    reviews = reviewer(rows).dataset
    by_title = {(r["title"], r["polarity"]): r["review"] for r in reviews}
    pairs = {"train": [], "validation": []}
    for r in job["rows"]:
        pairs[r["split"]].append({"prompt": r["prompt"], "chosen": by_title.get((r["title"], "negative")),
                                  "rejected": by_title.get((r["title"], "positive")), "title": r["title"]})
    DatasetDict({k: Dataset.from_list(v) for k, v in pairs.items() if v}).save_to_disk(out_dir)
    print(json.dumps({"pairs": sum(map(len, pairs.values())), "out": out_dir}))
