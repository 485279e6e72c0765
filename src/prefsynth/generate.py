"""Stage 3, generate: one negative and one positive review per title, on a generation engine (`prefsynth.engines`).

Every generation is keyed by (model fingerprint, template hash, sampling parameters, title, polarity) and stored in
the cache's journal the moment it finishes, so a rerun generates nothing already done and a crash loses only the
reviews still inside the engine. All missing prompts go to the engine at once; results stream back as they finish.
The engine is loaded only when something is missing, and the judge stage reuses it (`engines.get_backend`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from prefsynth.cache import make_key
from prefsynth.config import opt
from prefsynth.constants import SENTENCE_END
from prefsynth.engines import Request, get_backend
from prefsynth.errors import UserError
from prefsynth.model import ModelRef, home, resolve_model
from prefsynth.prompts import NEUTRAL, POLARITIES, Templates, template_for
from prefsynth.shared_store import Tiered


# The opening every hand-labelled text up to 2026-12-02 was written with: texts sampled with another one are told
# apart in the validity estimate (prefsynth.quality.opening_tag).
PLAIN_OPENING = "The paper"


@dataclass
class GenerateConfig:
    # The writer (bench/writer.py, docs/quality.md): on 60 held-out titles, 77% instead of 48% of kept pairs valid and
    # of the asked tone (blind-read labels), 95% instead of 87% of titles with a pair, 43% fewer tokens.
    model: str = opt("writer", "'writer' (SmolLM2-135M-Instruct + the writer adapter in data/writer, judged by the "
                               "bundled model), 'bundled' (SmolLM2-135M-Instruct), a local folder or a Hugging Face "
                               "model id", alias="model")
    backend: Literal["auto", "vllm", "transformers"] = opt("auto", "auto: vLLM when installed, else transformers")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "auto: float32 on CPU (faster than bf16 without AMX), bfloat16 on GPU")
    # Stop and repetition penalty were chosen side by side for the bundled model on 40 titles
    # (bench/source_variants.py, docs/quality.md; best there with T 0.5). The writer kept as many good pairs at
    # T 0.7 as at 0.5 (81% of kept pairs on held-out titles, one sample each), yields more titles, varies more.
    temperature: float = opt(0.7, "sampling temperature (the bundled model did best at 0.5: --model bundled "
                                   "--generate.temperature 0.5)")
    top_p: float = opt(0.95, "nucleus sampling")
    repetition_penalty: float = opt(1.05, "vLLM's repetition penalty (1 = off) on tokens of the prompt and the "
                                          "review so far: a small model then neither loops nor copies the examples")
    stop: list[str] = opt(["\n\n"], "the review ends at the first of these strings (comma-separated, \\n = newline; "
                                      "'' for none; default: the first blank line, one paragraph: later ones drift "
                                      "into talk about the review)")
    max_tokens: int = opt(96, "new tokens per review; longer reviews are cut (see build.truncated)")
    seed: int = opt(0, "sampling seed (each request gets its own seed derived from its key)")
    # A stop rule: the writer's failures sit in its later sentences (6% of its one- and two-sentence negative reviews
    # are not valid, 20-30% of those with four to six). Side by side on 120 fresh titles, read blind (docs/quality.md):
    # 96% instead of 92% of kept pairs valid at n = 4; 94% over 360. The cut is made on the generated text, so a
    # review is exactly what generation stopping there would have written (same seed, same prefix).
    max_sentences: int = opt(2, "keep each review's first N sentences (0: all); the rest is generated and counted "
                                "in the tokens, then cut")
    system_prompt: str | None = opt(None, "system message; None keeps the model's default")
    opening: str = opt(PLAIN_OPENING, "words the reply starts with, written into the assistant turn before the model "
                       "continues (e.g. 'The paper'): it then writes as the reviewer, not about a review; kept in the "
                       "text. Several alternatives separated by '|' rotate: candidate k of a (title, polarity) starts "
                       "with the alternative after candidate k-1's, the first one picked by a hash of both")
    candidates: int = opt(4, "at most this many reviews sampled per (title, polarity), each under its own cache key "
                             "and seed; candidate k is sampled only where candidates 0..k-1 all failed a filter or "
                             "the judge, and the build keeps the best (build.pairing sampled: 2 x this many per "
                             "title, all from the dataset prompt)", alias="candidates")
    cache_dir: Path | None = opt(None, "generation cache (default: $PREFSYNTH_HOME/cache)", alias="cache")
    fsync_seconds: float = opt(1.0, "finished reviews reach the cache journal at once; fsync at most this often")
    store: str | None = opt(None, "a store every worker reaches, behind the local cache: file:///mnt/shared/prefsynth "
                                  "or an fsspec URL (s3://bucket/prefix, ...); reviews and scores found there are not "
                                  "made again, new ones are written there as they finish (shards on workers need it)")
    # vLLM engine settings; on GPUs these pass straight through to vllm.LLM
    max_num_seqs: int = opt(128, "vLLM: sequences decoded together")
    kv_cache_gib: int = opt(2, "vLLM on CPU: KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE)")
    tensor_parallel_size: int = opt(1, "vLLM: GPUs per model (tensor parallelism)")
    data_parallel_size: int = opt(1, "vLLM server (`prefsynth engine`): model replicas on this machine's GPUs, each "
                                     "tensor_parallel_size wide (in-process runs: one worker per GPU and shards)")
    gpu_memory_utilization: float = opt(0.85, "vLLM on GPU: fraction of GPU memory to use")
    enforce_eager: bool = opt(True, "vLLM: skip torch.compile (starts ~50s faster on CPU)")
    cpu_block_size: int = opt(32, "vLLM on CPU: KV-cache block size (a multiple of 32); smaller blocks let "
                                  "shorter shared prompt prefixes hit the prefix cache")
    cpu_in_process: bool = opt(True, "vLLM on CPU: run the engine in this process on every core (faster, starts "
                                     "in seconds, dies with its parent; see prefsynth/engines/cpu_sampler.py)")
    max_model_len: int = opt(2048, "vLLM: context length to reserve per sequence")
    engine_url: str | None = opt(None, "a running vLLM server (`make engine`, e.g. http://127.0.0.1:8765): generate "
                                       "and judge there instead of loading the model in this process",
                                 alias="engine")
    batch_size: int = opt(64, "transformers backend: prompts per batch")

    def sampling(self) -> dict[str, object]:
        """The parameters that change what is sampled, hence part of every cache key."""
        out: dict[str, object] = {"temperature": self.temperature, "top_p": self.top_p,
                                  "max_tokens": self.max_tokens, "seed": self.seed}
        # Added later: part of the key only when not off, so reviews cached before they existed keep their keys.
        if self.repetition_penalty != 1.0:
            out["repetition_penalty"] = self.repetition_penalty
        if self.stop_strings():
            out["stop"] = self.stop_strings()
        return out

    def stop_strings(self) -> list[str]:
        """`stop` with the escapes a command line can carry (\\n, \\t) turned into the characters."""
        return [s.replace("\\n", "\n").replace("\\t", "\t") for s in self.stop if s]


GEN_SCHEMA: dict[str, pl.DataType] = {
    "title": pl.Utf8, "polarity": pl.Utf8, "text": pl.Utf8, "prompt_tokens": pl.Int32,
    "completion_tokens": pl.Int32, "finish_reason": pl.Utf8, "model": pl.Utf8, "template_hash": pl.Utf8,
    "backend": pl.Utf8,
}


def request_seed(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


@dataclass
class Generations:
    rows: pl.DataFrame  # one row per (title, polarity, candidate): GEN_SCHEMA + key + candidate
    model: ModelRef
    stats: dict[str, float] = field(default_factory=dict)
    dtype: str | None = None  # of the engine this run generated with (None: everything came from the cache)


def cache_root(cfg: GenerateConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else home() / "cache"


# A sentence break: a sentence end before whitespace and a capital, a quote or a bracket ("e.g. the", "Fig. 3" and
# "3.5" go on).
_SENTENCE_BREAK = rf"""({SENTENCE_END})(\s+)([A-Z"(\[])"""


def cut_sentences(rows: pl.DataFrame, max_sentences: int) -> pl.DataFrame:
    """Each review's first `max_sentences` sentences; a cut review ends like a stopped one (finish_reason "stop")
    and gets a key of its own, so judgements of the whole text and of the cut one are never mixed up."""
    if max_sentences <= 0:
        return rows
    parts = pl.col("text").str.replace_all(_SENTENCE_BREAK, "${1}${2}\x00${3}").str.split("\x00")
    cut = parts.list.len() > max_sentences
    return rows.with_columns(
        pl.when(cut).then(parts.list.head(max_sentences).list.join("").str.strip_chars_end())
        .otherwise(pl.col("text")).alias("text"),
        pl.when(cut).then(pl.lit("stop")).otherwise(pl.col("finish_reason")).alias("finish_reason"),
        (pl.col("key") + f":first{max_sentences}").alias("key"),
    )


def generation_key(model: ModelRef, templates: Templates, cfg: GenerateConfig, title: str, polarity: str,
                   candidate: int = 0) -> str:
    """The cache key of one review. The opening and the candidate index join the key only when set, so reviews
    cached before either existed keep their keys (and candidate 0 is the review a one-candidate run makes)."""
    extra: dict[str, object] = {}
    if opening := opening_for(cfg, polarity, title, candidate):
        extra["opening"] = opening
    if candidate:
        extra["candidate"] = candidate
    return make_key(model=model.fingerprint, templates=templates.hash_for(template_for(polarity)),
                    params=cfg.sampling(),
                    system=cfg.system_prompt, title=title, polarity=polarity, **extra)


def opening_for(cfg: GenerateConfig, polarity: str, title: str = "", candidate: int = 0) -> str:
    """The words one review starts with. A NEUTRAL review is sampled exactly as the policy would write it from the
    stored prompt: no opening words and no system message of ours (the model's own default, as TRL's chat template
    adds it). With several alternatives, titles spread over them and each retry of a review starts differently."""
    if polarity == NEUTRAL:
        return ""
    alternatives = cfg.opening.split("|")
    if len(alternatives) == 1:
        return cfg.opening
    first = int(hashlib.sha256(f"{title}\0{polarity}".encode()).hexdigest()[:8], 16)
    return alternatives[(first + candidate) % len(alternatives)]


def prompt_for(backend, templates: Templates, cfg: GenerateConfig, title: str, polarity: str,
               candidate: int = 0) -> str:
    """The engine input of one review: chat-templated instruction (plus the opening words the reply starts with)."""
    if polarity == NEUTRAL:
        return backend.chat(templates.dataset(title))
    # The configured system message wins over prompts/system.j2; judge prompts carry neither of the two.
    system = cfg.system_prompt if cfg.system_prompt is not None else templates.system()
    return backend.chat(templates.generation(title, polarity), system) + opening_for(cfg, polarity, title, candidate)


def generate(titles: list[str], templates: Templates, cfg: GenerateConfig,
             progress: Callable[[int, int], None] | None = None, candidate: int | None = None,
             need: set[tuple[str, str]] | None = None, polarities: tuple[str, ...] = POLARITIES) -> Generations:
    """Ensure a cached review exists for every (title, polarity) and candidate; generate only the missing ones.

    `candidate` restricts the run to one candidate index and `need` to some (title, polarity) reviews: the
    pipeline generates candidate k only for the reviews that no earlier candidate got right (prefsynth.rounds)."""
    t0 = time.time()
    model = resolve_model(cfg.model)
    store = Tiered.open(cache_root(cfg), "generations", GEN_SCHEMA, cfg.store)
    store.sweep()
    if cfg.candidates < 1:
        raise UserError(f"generate.candidates must be at least 1, got {cfg.candidates}")
    indices = range(cfg.candidates) if candidate is None else [candidate]
    wanted = {generation_key(model, templates, cfg, t, p, c): (t, p, c)
              for t in titles for p in polarities for c in indices if need is None or (t, p) in need}
    have = store.load(set(wanted))
    todo = [k for k in wanted if k not in set(have.get_column("key").to_list())]
    stats: dict[str, float] = {"requested": len(wanted), "reused": len(wanted) - len(todo), "generated": 0,
                               "completion_tokens": 0, "prompt_tokens": 0, "quarantined_shards": store.quarantined}
    t_engine = t_gen = 0.0
    dtype = None
    if todo:
        t1 = time.time()
        backend = get_backend(model, cfg)
        dtype = backend.dtype
        t_engine = time.time() - t1
        requests = [Request(k, prompt_for(backend, templates, cfg, *wanted[k]), request_seed(k)) for k in todo]
        from tqdm.auto import tqdm

        from prefsynth.progress import Meter

        bar = tqdm(total=len(requests), desc=f"generating ({backend.name})", unit="review", dynamic_ncols=True,
                   disable=progress is not None)
        meter = Meter(f"generating ({backend.name})", len(requests), cfg.max_tokens,
                      lambda: backend.tokens_generated, log_without_sink=bar.disable)

        shown = [0.0]

        def on_step() -> None:  # between engine steps: the bar moves while every request is still running
            if time.time() - shown[0] >= 1.0:  # a redraw per engine step would flood logs and pipes
                shown[0] = time.time()
                bar.set_postfix(meter.postfix(), refresh=False)
                bar.refresh()
            meter.tick()

        t2 = time.time()
        backend.on_step = on_step
        # Every finished review goes to the journal as it arrives: a crash loses only reviews still in the engine.
        try:
            with store.journal(cfg.fsync_seconds) as journal:
                for out in backend.generate(requests):
                    title, polarity, c = wanted[out.key]
                    journal.add({"key": out.key, "title": title, "polarity": polarity,
                                 "text": opening_for(cfg, polarity, title, c) + out.text,
                                 "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                                 "finish_reason": out.finish_reason, "model": model.name,
                                 "template_hash": templates.hash_for(template_for(polarity)),
                                 "backend": backend.name})
                    stats["generated"] += 1
                    stats["completion_tokens"] += out.completion_tokens
                    stats["prompt_tokens"] += out.prompt_tokens
                    meter.finished(out.completion_tokens)
                    bar.set_postfix(meter.postfix(), refresh=False)
                    bar.update(1)
                    meter.tick()
                    if progress:
                        progress(int(stats["generated"]), len(requests))
        finally:
            backend.on_step = None
        meter.tick(force=True)
        bar.close()
        t_gen = time.time() - t2
        have = store.load(set(wanted))
    missing = set(wanted) - set(have.get_column("key").to_list())
    if missing:  # only possible if the cache was tampered with mid-run
        raise UserError(f"{len(missing)} generations are missing from the cache after generating")
    stats.update(pulled_from_store=store.pulled, engine_seconds=round(t_engine, 2), generate_seconds=round(t_gen, 2),
                 tokens_per_second=round(stats["completion_tokens"] / t_gen, 1) if t_gen else 0.0,
                 seconds=round(time.time() - t0, 2))
    candidate = pl.DataFrame({"key": list(wanted), "candidate": [c for _, _, c in wanted.values()]},
                             schema={"key": pl.Utf8, "candidate": pl.Int32})
    rows = cut_sentences(have.join(candidate, on="key", how="left", maintain_order="left"), cfg.max_sentences)
    return Generations(rows, model, stats, dtype)
