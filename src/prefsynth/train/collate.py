"""Prompt-side truncation: cut the prompt from the left so the completion, the thing being learnt, stays whole.

Measured (see docs/training.md): the neutral dataset prompt is ~180-195 tokens with SmolLM2's chat template, longer
than the Reviewer #2 max_length of 128. TRL 1.16's only supported mode (keep_start) drops every example whose prompt
alone fills max_length, and then fails with "num_samples=0". The default (`truncation: prompt`) cuts the prompt from
the left instead, in the collators below, so the prompt keeps its end (title, instruction, chat turn marker).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


def fit_prompt(prompt: list[int], completions: list[list[int]], max_length: int) -> tuple[list[int], list[list[int]]]:
    """Cut `prompt` from the left so prompt + the longest completion fit in max_length. Completions stay whole
    unless one alone leaves less than a quarter of the window to the prompt; then they are cut at the right.
    All completions keep the same prompt (a DPO pair must be compared on the same context)."""
    longest = max((len(c) for c in completions), default=0)
    if len(prompt) + longest <= max_length:
        return prompt, completions
    keep = max(max_length - longest, min(len(prompt), max_length // 4))
    room = max_length - keep
    return prompt[len(prompt) - keep:], [c[:room] for c in completions]


def fit_example(example: dict, keys: tuple[str, ...], budget: int) -> dict:
    """One tokenized example with its prompt (and, if need be, the completions under `keys`) cut to `budget`."""
    prompt, comps = fit_prompt(example["prompt_ids"], [example[k] for k in keys], budget)
    return {**example, "prompt_ids": prompt, **dict(zip(keys, comps))}


def collators():
    """Collator subclasses that truncate the prompt side first, then let TRL pad (imported lazily: TRL is heavy)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    @dataclass
    class PromptFirstPreference(DataCollatorForPreference):
        budget: int | None = None

        def torch_call(self, examples):
            if self.budget is not None:
                examples = [fit_example(e, ("chosen_ids", "rejected_ids"), self.budget) for e in examples]
            return super().torch_call(examples)

    @dataclass
    class PromptFirstUnpaired(DataCollatorForUnpairedPreference):
        budget: int | None = None

        def torch_call(self, examples):
            if self.budget is not None:
                keys = tuple(k for k in ("completion_ids", "KL_completion_ids") if k in examples[0])
                examples = [fit_example(e, keys, self.budget) for e in examples]
            return super().torch_call(examples)

    return PromptFirstPreference, PromptFirstUnpaired


def truncation_stats(ds, completion_keys: tuple[str, ...], max_length: int | None) -> dict:
    """What truncation does to this data, measured on the tokenized training set."""
    prompts = [len(p) for p in ds["prompt_ids"]]
    longest = [max(len(c) for c in cs) for cs in zip(*(ds[k] for k in completion_keys))]
    out = {"rows": len(prompts), "prompt_tokens_min": min(prompts, default=0),
           "prompt_tokens_max": max(prompts, default=0),
           "completion_tokens_max": max(longest, default=0),
           "completion_tokens_mean": round(statistics.fmean(longest), 1) if longest else 0.0}
    if max_length is not None and prompts:
        cut = [fit_prompt(list(range(p)), [list(range(c))], max_length) for p, c in zip(prompts, longest)]
        out["prompt_cut_share"] = round(sum(len(p2) < p for (p2, _), p in zip(cut, prompts)) / len(prompts), 4)
        out["completion_cut_share"] = round(sum(len(c2[0]) < c for (_, c2), c in zip(cut, longest)) / len(prompts), 4)
        out["prompt_tokens_kept_mean"] = round(statistics.fmean(len(p2) for p2, _ in cut), 1)
    return out
