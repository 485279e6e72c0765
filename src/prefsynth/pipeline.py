"""The whole build, in order: collect -> prompts -> generate -> judge -> build -> write -> publish.

`run` is the only place that sequences the stages. The Prefect flow passes `step=` to turn each stage into a
Prefect task; the CLI runs it as plain function calls. Either way the same code runs.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefsynth import build as build_mod
from prefsynth.build import BuildConfig
from prefsynth.card import package_versions
from prefsynth.write import WriteResult, write_dataset
from prefsynth.collect import CollectConfig, Titles, collect
from prefsynth.config import opt, to_dict
from prefsynth.familiar import load as familiar_words
from prefsynth.fsutil import FileLock, check_writable_dir
from prefsynth.generate import GenerateConfig, Generations, cache_root
from prefsynth.judge import JudgeConfig, Judged
from prefsynth.prompts import PromptConfig, Templates
from prefsynth.publish import PublishConfig, publish
from prefsynth.quality import cut_tag
from prefsynth.rounds import FanOut, generate_judged

Step = Callable[[Callable[..., Any], str], Callable[..., Any]]


def plain_step(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    return fn


@dataclass
class PipelineConfig:
    name: str = opt("reviewer2", "dataset name shown in the card")
    collect: CollectConfig = field(default_factory=CollectConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)


@dataclass
class Summary:
    out: str
    changed: bool
    version: int
    rows: dict
    dropped: dict
    stats: dict
    published: list = field(default_factory=list)
    wall_seconds: float = 0.0
    peak_rss_gib: float = 0.0  # this process and the children it waited for (an --engine server is not one)

    def lines(self) -> list[str]:
        g = self.stats.get("generate", {})
        b = self.stats.get("build", {})
        out = [f"dataset v{self.version} at {self.out}" + ("" if self.changed else " (unchanged: nothing written)")]
        for config, splits in self.rows.items():
            out.append(f"  {config}: " + ", ".join(f"{s} {n}" for s, n in splits.items()))
        out.append(f"  pairs: {b.get('pairs_generated')} generated, {b.get('pairs_kept')} kept"
                   + ("; dropped by filter: " + ", ".join(f"{k} {v}" for k, v in self.dropped.items() if v)
                      if any(self.dropped.values()) else ""))
        if y := b.get("sampled"):
            out.append(f"  sampled (on-policy) pairing: {y['titles_with_pair']}/{y['titles']} titles gave a pair from "
                       f"{y['candidates_generated']} reviews ({y['titles_without_two_valid']} lacked two valid ones, "
                       f"{y['titles_margin_too_small']} had a judged margin under {y['min_margin']})")
        if b.get("quality"):
            from prefsynth.quality import describe

            out += [f"  {line}" for line in describe(b["quality"])]
        if "noise_rate_before" in b:
            out.append(f"  judged inconsistent: {b['noise_rate_before']:.1%} of pairs before filtering -> "
                       f"{b['noise_rate_after']:.1%} kept (LLM and lexicon agree on {b['judge_agreement']:.1%} of the "
                       "reviews both read)")
        out.append(f"  reviews: {g.get('generated', 0):.0f} generated, {g.get('reused', 0):.0f} from cache; "
                   f"{g.get('completion_tokens', 0):.0f} tokens at {g.get('tokens_per_second', 0):.1f} tok/s")
        if w := g.get("on_workers"):
            out.append(f"  on workers: {w['shard_runs']} shard runs ({w['resubmitted']} submitted again) generated "
                       f"{w['generated']:.0f} reviews and judged {w['judged']:.0f}; "
                       f"{w['pulled_from_store']:.0f} were resumed from the store")
        for p in self.published:
            out.append(f"  published {p['repo_id']}@{p['revision'][:12]}"
                       + (f" ({p['tag']})" if p.get("tag") else "") + ("" if p.get("committed") else " unchanged"))
        out.append(f"  wall time {self.wall_seconds:.1f}s, peak RSS {self.peak_rss_gib:.2f} GiB")
        return out


def reproduce_command(cfg: PipelineConfig) -> str:
    """The CLI call that rebuilds this dataset: every setting that differs from the defaults."""
    flat_default = _flatten(to_dict(PipelineConfig()))
    flat = _flatten(to_dict(cfg))
    args = ["prefsynth", "build"]
    for k, v in flat.items():
        if k.startswith("publish.") or v == flat_default.get(k):
            continue
        args += [f"--{k}", str(v) if v is not None else "none"]
    return shlex.join(args)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def provenance(cfg: PipelineConfig, titles: Titles, templates: Templates, gens: Generations) -> dict:
    from prefsynth.engines import resolve_dtype

    return {
        "name": cfg.name, "model": gens.model.name, "model_fingerprint": gens.model.fingerprint,
        "backend": ",".join(sorted(set(gens.rows.get_column("backend").to_list()))) if gens.rows.height else "",
        # the engine's own when this run generated; without one, what this config resolves to (with --engine:
        # as configured, since the server's machine decides "auto")
        "dtype": gens.dtype or (cfg.generate.dtype if cfg.generate.engine_url else resolve_dtype(cfg.generate.dtype)),
        "template_hash": templates.hash,
        # with the stop rule (the texts cut to their first N sentences) when it is on: what a reader of the card needs
        "sampling": cfg.generate.sampling() | cut_tag(cfg.generate.max_sentences),
        "titles_source": _display_source(cfg.collect.source),
        "n": len(titles.titles), "collect_seed": cfg.collect.seed, "chosen": cfg.build.chosen,
        "license": cfg.build.license, "command": reproduce_command(cfg), "argv": shlex.join(sys.argv[1:]),
        "packages": package_versions(), "config": {k: v for k, v in to_dict(cfg).items() if k != "publish"},
    }


def _display_source(source: str) -> str:
    from prefsynth.constants import DEFAULT_TITLES

    return "default titles (data/titles.txt)" if Path(source) == DEFAULT_TITLES else source


def _write(built, cfg: PipelineConfig, prov: dict, splits: dict[str, str], plots: dict[str, bytes]) -> WriteResult:
    return write_dataset(cfg.build.out, built, prov, splits, cfg.build.lock_timeout, plots)


def run(cfg: PipelineConfig, step: Step = plain_step, fan_out: FanOut | None = None) -> Summary:
    t0 = time.time()
    out = check_writable_dir(cfg.build.out, "output")
    if cfg.publish.repo_id:
        cfg.publish.validate()  # a bad repo id should fail before an hour of generation, not after
    if cfg.build.prefer_familiar and cfg.generate.candidates > 1:
        familiar_words(Path(cfg.build.familiar_words))  # likewise a bad word-count file (one clear line)
    templates = step(lambda c: Templates(c), "prompts")(cfg.prompts)
    titles = step(collect, "collect")(cfg.collect)
    # One build per cache at a time: two runs would otherwise generate the same missing reviews twice.
    with FileLock(cache_root(cfg.generate) / ".lock", timeout=cfg.build.lock_timeout,
                  what=f"generation cache {cache_root(cfg.generate)}"):
        gens, judged = generate_judged(titles.titles, templates, cfg.generate, cfg.judge, cfg.build, step, fan_out)
    splits = build_mod.assign_splits(titles.titles, cfg.build, build_mod.read_previous_splits(out))
    built = step(build_mod.build, "build")(gens.rows, titles.titles, templates, cfg.build,
                                           judged.scores if judged else None, splits)
    plots = {}
    if judged is not None:
        from prefsynth.plots import judge_histogram

        plots["judge_scores.png"] = judge_histogram(gens.rows, judged.scores, cfg.build.chosen)
    if judged is not None:
        built.stats["quality"] = quality_figures(cfg, templates, gens, judged, built.stats)
    prov = provenance(cfg, titles, templates, gens)
    written = step(_write, "write")(built, cfg, prov, splits, plots)
    published = []
    if cfg.publish.repo_id:
        published = [to_dict(r) for r in step(publish, "publish")(written.out, cfg.publish)]
    stats = {"collect": titles.stats, "generate": gens.stats, "build": built.stats}
    if judged is not None:
        stats["judge"] = judged.stats
    return Summary(str(written.out), written.changed, written.version, built.stats["rows"],
                   built.stats["dropped"], stats, published, round(time.time() - t0, 2), peak_rss_gib())


def quality_figures(cfg: PipelineConfig, templates: Templates, gens: Generations, judged: Judged,
                    stats: dict) -> dict:
    """Which judge labelled the rows, its measured accuracy, and the noise and validity it implies (quality.py)."""
    from prefsynth import quality
    from prefsynth.validity import rules_version
    from prefsynth.validity_scorer import checks_version

    judge = str(judged.stats.get("judge", ""))
    judge_fp = str(judged.stats.get("judge_model_fingerprint") or gens.model.fingerprint)
    acc = quality.judge_accuracy(judge, judge_fp, templates.hash_for("judge"))
    q = {"judge": judge, "judge_model": judged.stats.get("judge_model"),
         "judge_accuracy": {k: v for k, v in acc.items() if k != "judge"},
         "noise": quality.noise_estimate(stats, acc, cfg.build.chosen)}
    if cfg.build.invalid != "keep":
        sampling = cfg.generate.sampling() | quality.writer_tag(gens.model.name, gens.model.fingerprint) | (
            quality.opening_tag(cfg.generate.opening)) | quality.cut_tag(cfg.generate.max_sentences)
        q["validity"] = quality.validity_estimate(
            checks_version(rules_version(templates), cfg.build.max_p_invalid), sampling)
    return q


def peak_rss_gib() -> float:
    """Peak resident memory so far (Linux reports KiB), the larger of this process and its finished children."""
    import resource

    kib = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return round(kib / 2**20, 2)
