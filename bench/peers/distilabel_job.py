"""distilabel's side of `make bench-peers`: the job as a distilabel Pipeline, run inside distilabel's own venv.

    .state/peers/venvs/distilabel/bin/python bench/peers/distilabel_job.py JOB.json OUT_DIR CACHE_DIR

A loader step feeds every title to two text-generation tasks (negative, positive) whose OpenAILLM talks to the
bench's vLLM server; their outputs are combined, ranked (the negative review rated higher: it is `chosen`) and put
in DPO form by FormatTextGenerationDPO; the Distiset is split by the job's title -> split and saved to OUT_DIR.
Rerunning the same command after a crash resumes from the pipeline cache in CACHE_DIR (use_cache=True), as
distilabel's docs say.

The job's prompts are already chat-templated text (the exact text prefsynth sends, with the opening words of the
reply in the assistant turn): TextGeneration always wraps its instruction in a user message, so `TemplatedPrompt`
passes the text through as is, and OpenAILLM posts a string prompt to /v1/completions, the endpoint prefsynth uses.
OpenAILLM has no seed setting: every request carries the job's one fixed seed through `extra_body`.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the Hub (offline machine)

from datasets import DatasetDict  # noqa: E402
from distilabel.models.llms import OpenAILLM  # noqa: E402
from distilabel.pipeline import Pipeline  # noqa: E402
from distilabel.steps import (  # noqa: E402
    CombineOutputs, FormatTextGenerationDPO, LoadDataFromDicts, StepInput, step)
from distilabel.steps.tasks import TextGeneration  # noqa: E402


class TemplatedPrompt(TextGeneration):
    """TextGeneration whose instruction is the finished prompt text: sent as is (a str goes to /v1/completions)."""

    def format_input(self, input):
        return input["instruction"]


@step(inputs=["negative", "positive", "opening"], outputs=["generations", "ratings"])
def RankReviews(inputs: StepInput):
    """The reply starts with the job's opening words, which the prompt holds; the negative review is chosen."""
    for row in inputs:
        row["generations"] = [None if row[p] is None else row["opening"] + row[p] for p in ("negative", "positive")]
        row["ratings"] = [1.0, 0.0]
    yield inputs


def pipeline(job: dict, cache_dir: str, batch: int) -> Pipeline:
    rows = [{"instruction": r["prompt"], "title": r["title"], "split": r["split"], "opening": job["opening"],
             "negative_text": r["negative"]["text"], "positive_text": r["positive"]["text"]} for r in job["rows"]]
    s = job["sampling"]
    with Pipeline(name="prefsynth-peers-reviews", cache_dir=cache_dir) as p:
        load = LoadDataFromDicts(data=rows, batch_size=batch)
        tasks = [TemplatedPrompt(
            name=f"{polarity}_review", input_batch_size=batch,
            llm=OpenAILLM(model=job["model"], base_url=job["base_url"], api_key="EMPTY", generation_kwargs={
                "temperature": s["temperature"], "top_p": s["top_p"], "max_new_tokens": s["max_tokens"],
                "extra_body": {"seed": job["fixed_seed"]}}),
            input_mappings={"instruction": f"{polarity}_text"},
            output_mappings={"generation": polarity, "model_name": f"{polarity}_model"})
            for polarity in ("negative", "positive")]
        load >> tasks >> CombineOutputs() >> RankReviews() >> FormatTextGenerationDPO()
    return p


if __name__ == "__main__":
    job_file, out_dir, cache_dir = sys.argv[1:4]
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    with open(job_file) as f:
        job = json.load(f)
    distiset = pipeline(job, cache_dir, batch).run(use_cache=True)
    rows = distiset["default"]["train"]
    distiset["default"] = DatasetDict({split: rows.filter(lambda r, s=split: r["split"] == s)
                                       for split in ("train", "validation") if split in set(rows["split"])})
    distiset.save_to_disk(out_dir)
    print(json.dumps({"pairs": len(rows), "out": out_dir}))
