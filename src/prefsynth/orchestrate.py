"""What the Prefect flows add around the pipeline, kept free of Prefect: stage logging, run names, generation in
shards and the hand-off to training. `flows/build_dataset.py` turns these into tasks and deployment calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prefsynth.constants import DEFAULT_HUB, MODE_FOR_CONFIG
from prefsynth.errors import UserError

# Deployments that train on what a build wrote: `<TRAIN_FLOW>/<mode>`, as declared in prefect.yaml.
TRAIN_FLOW = "train"


def pipeline_config(config: dict | None):
    """The PipelineConfig of a flow's `config` parameter; a value that does not parse is the user's to fix."""
    from prefsynth.config import from_dict
    from prefsynth.pipeline import PipelineConfig

    try:
        return from_dict(PipelineConfig, config or {})
    except (ValueError, TypeError) as e:
        raise UserError(f"config: {e}") from None


def run_name(config: dict | None, deployment: str | None = None) -> str:
    """A flow-run name that says what the run builds, e.g. 'refresh: both, all titles, SmolLM2 (bundled)'."""
    from prefsynth.config import from_dict
    from prefsynth.pipeline import PipelineConfig

    try:
        cfg = from_dict(PipelineConfig, config or {})
    except (ValueError, TypeError):
        return f"{deployment}: invalid config" if deployment else "build-dataset: invalid config"
    n = "all titles" if cfg.collect.n is None else f"{cfg.collect.n} titles"
    model = cfg.generate.model.rstrip("/").rsplit("/", 1)[-1] or cfg.generate.model
    parts = [n, model] if deployment == cfg.build.formats else [cfg.build.formats, n, model]
    return f"{deployment}: {', '.join(parts)}" if deployment else ", ".join(parts)


def describe(stage: str, result: Any) -> str | None:
    """One log line saying what a stage did (None: nothing worth saying)."""
    if stage == "collect":
        return f"collected {len(result.titles)} titles ({', '.join(f'{k} {v}' for k, v in result.stats.items())})"
    if stage == "generate":
        s = result.stats
        pulled = f", {s['pulled_from_store']:.0f} of them from the shared store" if s.get("pulled_from_store") else ""
        return (f"{s.get('generated', 0):.0f} reviews generated, {s.get('reused', 0):.0f} reused from the generation "
                f"cache{pulled} ({s.get('completion_tokens', 0):.0f} tokens, {s.get('tokens_per_second', 0):.1f} tok/s)")
    if stage == "judge":
        return "judged: " + ", ".join(f"{k} {v}" for k, v in sorted(result.stats.items())
                                      if not k.endswith("_fingerprint"))  # the model's name says it
    if stage == "build":
        return "built: " + "; ".join(f"{c} " + ", ".join(f"{s} {n}" for s, n in splits.items())
                                     for c, splits in result.stats.get("rows", {}).items())
    if stage == "write":
        return (f"dataset v{result.version} written to {result.out}" if result.changed
                else f"dataset v{result.version} at {result.out} unchanged: nothing written")
    if stage == "publish":
        return "; ".join(f"{r.repo_id}@{r.revision[:12]} {r.tag or ''} "
                         + ("committed" if r.committed else "unchanged (no commit)") for r in result)
    return None


def stage(fn: Callable[..., Any], name: str, log: Callable[[str], None],
          on_error: Callable[[], None] | None = None) -> Callable[..., Any]:
    """`fn` plus a log line about its result; `on_error` runs when it fails for a reason other than the user's
    (generation uses it to drop a possibly broken engine, so a retry starts a fresh one)."""
    def run_stage(*args: Any, **kwargs: Any) -> Any:
        from prefsynth import progress

        token = progress.sink.set(log)  # progress lines of long stages go where this stage's lines go
        try:
            result = fn(*args, **kwargs)
        except UserError:
            raise
        except Exception:
            if on_error is not None:
                on_error()
            raise
        finally:
            progress.sink.reset(token)
        if (line := describe(name, result)) is not None:
            log(line)
        return result

    run_stage.__name__ = run_stage.__qualname__ = f"stage_{name}"
    return run_stage


def retryable(exc: BaseException | None) -> bool:
    """Transient faults are worth a retry; a UserError (bad file, bad model, bad token) fails the same way again."""
    return not isinstance(exc, UserError)


def shard(titles: list[str], shards: int) -> list[list[str]]:
    """Contiguous, near-equal slices of `titles` (order kept), at most one per title."""
    if shards < 1:
        raise UserError(f"shards must be at least 1, got {shards}")
    k = min(shards, max(1, len(titles)))
    size, extra = divmod(len(titles), k)
    out, start = [], 0
    for i in range(k):
        end = start + size + (1 if i < extra else 0)
        out.append(titles[start:end])
        start = end
    return out


_SUMMED = ("requested", "reused", "generated", "completion_tokens", "prompt_tokens", "quarantined_shards",
           "engine_seconds", "generate_seconds", "seconds")


def generate_in_shards(titles: list[str], templates, cfg, *, shards: int,
                       run_shard: Callable[..., Any], **kw: Any):
    """Generate `titles` as several runs (`run_shard(i, n, part)` generates one part into the cache), then read
    the whole set back from the generation cache: the cache, not the shards, is what the build uses, so a sharded
    build gives exactly the rows an unsharded one would. Stats are the shards' own, summed."""
    from prefsynth.generate import generate

    parts = shard(titles, shards)
    results = [run_shard(i, len(parts), part, **kw) for i, part in enumerate(parts)]
    merged = generate(titles, templates, cfg, **kw)  # every review is cached by now: a read, not a generation
    if merged.stats.get("generated"):
        logging.getLogger("prefsynth.orchestrate").warning(
            "%d reviews were missing after the shards ran and were generated in the merge",
            merged.stats["generated"])
    stats = {k: sum(r.stats.get(k, 0) for r in results) for k in _SUMMED}
    stats["generated"] += merged.stats.get("generated", 0)
    stats["reused"] = stats["requested"] - stats["generated"]
    stats["shards"] = len(parts)
    stats["tokens_per_second"] = round(stats["completion_tokens"] / stats["generate_seconds"], 1) \
        if stats["generate_seconds"] else 0.0
    merged.stats = stats
    merged.dtype = merged.dtype or next((r.dtype for r in results if r.dtype), None)
    return merged


def handoff_targets(summary: dict, configs: list[str], name: str = "dataset") -> list[tuple[str, dict, str]]:
    """(training deployment, train config overrides, run name) for every dataset config a build wrote.

    The dataset reference is the Hub repo and the exact commit when the build was published (a GPU machine
    elsewhere can fetch it), else the local output folder (the training worker must see the same filesystem)."""
    out = []
    for config in configs:
        mode = MODE_FOR_CONFIG[config]
        ref: dict[str, Any] = {"data": summary["out"], "revision": None}
        for p in summary.get("published") or []:
            if config in (p.get("configs") or [config]):
                ref = {"data": p["repo_id"], "revision": p["revision"]}
                if p.get("endpoint") and p["endpoint"].rstrip("/") != DEFAULT_HUB:
                    ref["endpoint"] = p["endpoint"]
        out.append((f"{TRAIN_FLOW}/{mode}", {"mode": mode, **ref}, f"{mode}: {name} v{summary['version']}"))
    return out


def deep_merge(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it, nested dicts merged key by key (a deployment's own train settings
    survive the hand-off, which only sets what the build decides: mode and dataset reference)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
