"""Stage 3, generate: one negative and one positive review per title, through vLLM (or transformers).

Every generation is keyed by (model fingerprint, template hash, sampling parameters, title, polarity) and stored in
the cache's journal the moment it finishes, so a rerun generates nothing already done and a crash loses only the
reviews still inside the engine. All missing prompts go to the engine at once; results stream back as they finish.

Backends share one small interface (`Backend`): `generate` streams finished requests, `label_logprobs` scores label
words for the judge on the same loaded model (one engine per run, see `get_backend`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from prefsynth.cache import Store, make_key
from prefsynth.config import opt
from prefsynth.errors import UserError
from prefsynth.model import ModelRef, home, resolve_model
from prefsynth.prompts import POLARITIES, Templates

log = logging.getLogger("prefsynth.generate")


@dataclass
class GenerateConfig:
    model: str = opt("bundled", "'bundled' (SmolLM2-135M-Instruct), a local folder or a Hugging Face model id",
                     alias="model")
    backend: Literal["auto", "vllm", "transformers"] = opt("auto", "auto: vLLM when installed, else transformers")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "auto: float32 on CPU (faster than bf16 without AMX), bfloat16 on GPU")
    temperature: float = opt(0.7, "sampling temperature")
    top_p: float = opt(0.95, "nucleus sampling")
    max_tokens: int = opt(96, "new tokens per review; longer reviews are cut (see build.truncated)")
    seed: int = opt(0, "sampling seed (each request gets its own seed derived from its key)")
    system_prompt: str | None = opt(None, "system message; None keeps the model's default")
    cache_dir: Path | None = opt(None, "generation cache (default: $PREFSYNTH_HOME/cache)", alias="cache")
    fsync_seconds: float = opt(1.0, "finished reviews reach the cache journal at once; fsync at most this often")
    # vLLM engine settings; on GPUs these pass straight through to vllm.LLM
    max_num_seqs: int = opt(128, "vLLM: sequences decoded together")
    kv_cache_gib: int = opt(2, "vLLM on CPU: KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE)")
    tensor_parallel_size: int = opt(1, "vLLM: GPUs per model (tensor parallelism)")
    gpu_memory_utilization: float = opt(0.85, "vLLM on GPU: fraction of GPU memory to use")
    enforce_eager: bool = opt(True, "vLLM: skip torch.compile (starts ~50s faster on CPU)")
    cpu_block_size: int = opt(32, "vLLM on CPU: KV-cache block size (a multiple of 32); smaller blocks let "
                                  "shorter shared prompt prefixes hit the prefix cache")
    cpu_in_process: bool = opt(True, "vLLM on CPU: run the engine in this process on every core (faster, starts "
                                     "in seconds, dies with its parent; see prefsynth/vllm_cpu.py)")
    max_model_len: int = opt(2048, "vLLM: context length to reserve per sequence")
    batch_size: int = opt(64, "transformers backend: prompts per batch")

    def sampling(self) -> dict[str, float | int]:
        """The parameters that change what is sampled, hence part of every cache key."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "seed": self.seed}


GEN_SCHEMA: dict[str, pl.DataType] = {
    "title": pl.Utf8, "polarity": pl.Utf8, "text": pl.Utf8, "prompt_tokens": pl.Int32,
    "completion_tokens": pl.Int32, "finish_reason": pl.Utf8, "model": pl.Utf8, "template_hash": pl.Utf8,
    "backend": pl.Utf8,
}


@dataclass
class Request:
    key: str
    prompt: str  # already chat-formatted
    seed: int


@dataclass
class Output:
    key: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def _one_line(e: BaseException) -> str:
    """The most informative line of an exception message (pydantic puts a URL on the last line)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "errors.pydantic.dev" not in ln]
    pick = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else type(e).__name__)
    return pick[:300]


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def resolve_dtype(dtype: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if cuda_available() else "float32"


class Backend(ABC):
    name: str
    in_process = False  # True when the engine has no worker processes of its own to stop

    def __init__(self, model: ModelRef, cfg: GenerateConfig):
        self.model = model
        self.cfg = cfg
        self.dtype = resolve_dtype(cfg.dtype)

    @property
    @abstractmethod
    def tokenizer(self): ...

    def chat(self, text: str) -> str:
        """Wrap a user message in the model's chat template."""
        messages = [{"role": "user", "content": text}]
        if self.cfg.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n"

    @abstractmethod
    def generate(self, requests: list[Request]) -> Iterator[Output]:
        """Yield outputs as requests finish (any order)."""

    @abstractmethod
    def label_logprobs(self, prompts: list[str], token_ids: list[int]) -> Iterator[tuple[int, list[float]]]:
        """(prompt index, log-probability of each of `token_ids` as the next token), streamed as they finish."""

    def close(self) -> None:
        pass


def _context_length(path: str) -> int:
    """The model's own context limit, so a default max_model_len never exceeds it."""
    import json

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return 1 << 30
    return int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 1 << 30)


def _external_id(request_id: str) -> str:
    """enqueue() returns internal ids ("7-1a2b3c4d"); finished outputs carry the external part ("7")."""
    return request_id.rsplit("-", 1)[0]


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model: ModelRef, cfg: GenerateConfig):
        super().__init__(model, cfg)
        on_gpu = cuda_available()
        max_len = min(cfg.max_model_len, _context_length(model.path))
        kwargs = dict(
            model=model.path, dtype=self.dtype, seed=cfg.seed, enforce_eager=cfg.enforce_eager,
            max_num_seqs=cfg.max_num_seqs, max_model_len=max_len,
            tensor_parallel_size=cfg.tensor_parallel_size, enable_prefix_caching=True,
        )
        if on_gpu:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        else:
            from prefsynth import vllm_cpu

            # vLLM parses this as an integer number of GiB ("2.0" is rejected)
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cfg.kv_cache_gib))))
            # A prefill split over two steps makes vLLM rewind the request's random generator, which CPU
            # generators cannot do ("CPU Generator does not use offset") once requests carry their own seed:
            # schedule whole prefills only.
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(8192, max_len))
            # vllm-cpu's default KV block is 128 tokens, and prefix caching only shares whole blocks: the judge's
            # shared prefix (~45 tokens) was never reused. 32 is the smallest block its attention accepts.
            kwargs["block_size"] = cfg.cpu_block_size
            if cfg.cpu_in_process and cfg.tensor_parallel_size == 1:
                self.in_process = True
                vllm_cpu.configure_in_process()
                kwargs["distributed_executor_backend"] = "uni"
                vllm_cpu.install_fast_sampler()
        from vllm import LLM

        try:
            self.llm = LLM(**kwargs)
        except Exception as e:  # noqa: BLE001 - engine start failures are configuration problems
            raise UserError(f"vLLM could not load {model.name}: {_one_line(e)}") from None

    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    def _params(self, seed: int | None = None, **kw):
        from vllm import SamplingParams

        return SamplingParams(temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                              max_tokens=self.cfg.max_tokens, seed=seed, **kw)

    def _drain(self) -> Iterator:
        engine = self.llm.llm_engine
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    yield out

    def generate(self, requests: list[Request]) -> Iterator[Output]:
        params = [self._params(r.seed) for r in requests]
        ids = self.llm.enqueue([r.prompt for r in requests], params, use_tqdm=False)
        by_id = dict(zip(map(_external_id, ids), requests, strict=True))
        for out in self._drain():
            c = out.outputs[0]
            yield Output(by_id[out.request_id].key, c.text, len(out.prompt_token_ids), len(c.token_ids),
                         str(c.finish_reason))

    def label_logprobs(self, prompts: list[str], token_ids: list[int]) -> Iterator[tuple[int, list[float]]]:
        from vllm import SamplingParams

        # Greedy, one token, logprobs of exactly our label tokens (raw logits, before any sampling transform).
        params = SamplingParams(temperature=0.0, max_tokens=1, logprob_token_ids=list(token_ids))
        ids = self.llm.enqueue(prompts, params, use_tqdm=False)
        order = {_external_id(rid): i for i, rid in enumerate(ids)}
        for out in self._drain():
            lp = out.outputs[0].logprobs[0]
            yield order[out.request_id], [float(lp[t].logprob) if t in lp else float("-inf") for t in token_ids]

    def close(self) -> None:
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class TransformersBackend(Backend):
    """Fallback for machines without vLLM: batched decoding with a per-request torch.Generator, so each review
    depends on its own seed and not on which other prompts share its batch."""

    name = "transformers"
    in_process = True

    def __init__(self, model: ModelRef, cfg: GenerateConfig):
        super().__init__(model, cfg)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if cuda_available() else "cpu"
        try:
            self._tok = AutoTokenizer.from_pretrained(model.path)
            self.model_ = AutoModelForCausalLM.from_pretrained(
                model.path, dtype=getattr(torch, self.dtype)).to(self.device).eval()
        except Exception as e:  # noqa: BLE001
            raise UserError(f"transformers could not load {model.name}: {type(e).__name__}: {str(e)[:200]}") from None
        self._tok.padding_side = "left"
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token
        eos = self.model_.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos if eos is not None else self._tok.eos_token_id])

    @property
    def tokenizer(self):
        return self._tok

    # Prompts are padded to a multiple of this many tokens and batched only with prompts of the same padded length.
    # A prompt's numbers then depend on its own padded length alone, not on which prompts share its batch: a run
    # resumed after a crash computes exactly what the uninterrupted run would have.
    PAD_BUCKET = 32

    def _encode(self, prompts: list[str], length: int):
        return self._tok(prompts, return_tensors="pt", padding="max_length", max_length=length,
                         add_special_tokens=False).to(self.device)

    def _batches(self, prompts: list[str]) -> Iterator[tuple[list[int], int]]:
        """(indices, padded length) per batch: grouped by length bucket, in a fixed order."""
        lengths = [len(ids) for ids in self._tok(prompts, add_special_tokens=False)["input_ids"]]
        buckets: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            buckets.setdefault(-(-n // self.PAD_BUCKET) * self.PAD_BUCKET, []).append(i)
        for length in sorted(buckets):
            idx = buckets[length]
            for k in range(0, len(idx), self.cfg.batch_size):
                yield idx[k:k + self.cfg.batch_size], length

    def _sample(self, logits, gens):
        torch = self.torch
        if self.cfg.temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / self.cfg.temperature, dim=-1)
        if self.cfg.top_p < 1.0:
            sorted_p, idx = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < self.cfg.top_p
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(gens)])

    def _generate_batch(self, batch: list[Request], length: int) -> list[Output]:
        torch = self.torch
        enc = self._encode([r.prompt for r in batch], length)
        gens = [torch.Generator(device=self.device).manual_seed(r.seed) for r in batch]
        ids, mask = enc["input_ids"], enc["attention_mask"]
        n = len(batch)
        out_tokens: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        past = None
        step_ids = ids
        with torch.inference_mode():
            for _ in range(self.cfg.max_tokens):
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                out = self.model_(input_ids=step_ids, attention_mask=mask, past_key_values=past, use_cache=True,
                                  position_ids=pos[:, -step_ids.shape[1]:])
                past = out.past_key_values
                nxt = self._sample(out.logits[:, -1, :], gens)
                for i in range(n):
                    if not done[i]:
                        t = int(nxt[i])
                        if t in self.eos:
                            done[i] = True
                        else:
                            out_tokens[i].append(t)
                if all(done):
                    break
                step_ids = nxt.unsqueeze(-1)
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=mask.device)], dim=-1)
        prompt_lens = enc["attention_mask"].sum(-1).tolist()
        return [Output(r.key, self._tok.decode(out_tokens[i], skip_special_tokens=True), int(prompt_lens[i]),
                       len(out_tokens[i]), "stop" if done[i] else "length") for i, r in enumerate(batch)]

    def generate(self, requests: list[Request]) -> Iterator[Output]:
        ordered = sorted(requests, key=lambda r: r.key)
        for idx, length in self._batches([r.prompt for r in ordered]):
            yield from self._generate_batch([ordered[i] for i in idx], length)

    def label_logprobs(self, prompts: list[str], token_ids: list[int]) -> Iterator[tuple[int, list[float]]]:
        torch = self.torch
        with torch.inference_mode():
            for idx, length in self._batches(prompts):
                enc = self._encode([prompts[i] for i in idx], length)
                pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                logits = self.model_(**enc, position_ids=pos).logits[:, -1, :].float()
                for j, row in zip(idx, torch.log_softmax(logits, dim=-1)[:, token_ids].tolist()):
                    yield j, row


_BACKENDS: dict[tuple, Backend] = {}


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def get_backend(model: ModelRef, cfg: GenerateConfig) -> Backend:
    """One loaded engine per (model, backend, dtype) per process: generation and judging share it."""
    kind = cfg.backend
    if kind == "auto":
        kind = "vllm" if vllm_available() else "transformers"
    if kind == "vllm" and not vllm_available():
        raise UserError("backend 'vllm' requested but vLLM is not installed (run `make install`)")
    ident = (model.path, kind, resolve_dtype(cfg.dtype), cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.seed,
             cfg.system_prompt)
    if ident not in _BACKENDS:
        cls = VLLMBackend if kind == "vllm" else TransformersBackend
        _BACKENDS[ident] = cls(model, cfg)
    return _BACKENDS[ident]


def close_backends(process_exit: bool = False) -> None:
    """Shut the engines down. When the process is about to end, engines that live wholly inside it are left to
    the OS: their orderly shutdown is ~1 s of garbage collection that frees nothing anyone will use."""
    for b in _BACKENDS.values():
        if not (process_exit and b.in_process):
            b.close()
    _BACKENDS.clear()


def request_seed(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


@dataclass
class Generations:
    rows: pl.DataFrame  # one row per (title, polarity), GEN_SCHEMA + key
    model: ModelRef
    stats: dict[str, float] = field(default_factory=dict)


def cache_root(cfg: GenerateConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else home() / "cache"


def generation_key(model: ModelRef, templates: Templates, cfg: GenerateConfig, title: str, polarity: str) -> str:
    return make_key(model=model.fingerprint, templates=templates.hash_for(polarity), params=cfg.sampling(),
                    system=cfg.system_prompt, title=title, polarity=polarity)


def generate(titles: list[str], templates: Templates, cfg: GenerateConfig,
             progress: Callable[[int, int], None] | None = None) -> Generations:
    """Ensure a cached review exists for every (title, polarity); generate only the missing ones."""
    t0 = time.time()
    model = resolve_model(cfg.model)
    store = Store(cache_root(cfg), "generations", GEN_SCHEMA)
    store.sweep()
    wanted = {generation_key(model, templates, cfg, t, p): (t, p) for t in titles for p in POLARITIES}
    have = store.load(set(wanted))
    todo = [k for k in wanted if k not in set(have.get_column("key").to_list())]
    stats: dict[str, float] = {"requested": len(wanted), "reused": len(wanted) - len(todo), "generated": 0,
                               "completion_tokens": 0, "prompt_tokens": 0, "quarantined_shards": store.quarantined}
    t_engine = t_gen = 0.0
    if todo:
        t1 = time.time()
        backend = get_backend(model, cfg)
        t_engine = time.time() - t1
        requests = [Request(k, backend.chat(templates.generation(*wanted[k])), request_seed(k)) for k in todo]
        from tqdm.auto import tqdm

        bar = tqdm(total=len(requests), desc=f"generating ({backend.name})", unit="review", dynamic_ncols=True,
                   disable=progress is not None)
        t2 = time.time()
        # Every finished review goes to the journal as it arrives: a crash loses only reviews still in the engine.
        with store.journal(cfg.fsync_seconds) as journal:
            for out in backend.generate(requests):
                title, polarity = wanted[out.key]
                journal.add({"key": out.key, "title": title, "polarity": polarity, "text": out.text,
                             "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                             "finish_reason": out.finish_reason, "model": model.name,
                             "template_hash": templates.hash_for(polarity), "backend": backend.name})
                stats["generated"] += 1
                stats["completion_tokens"] += out.completion_tokens
                stats["prompt_tokens"] += out.prompt_tokens
                bar.update(1)
                bar.set_postfix(tok_s=f"{stats['completion_tokens'] / max(time.time() - t2, 1e-9):.0f}")
                if progress:
                    progress(int(stats["generated"]), len(requests))
        bar.close()
        t_gen = time.time() - t2
        have = store.load(set(wanted))
    missing = set(wanted) - set(have.get_column("key").to_list())
    if missing:  # only possible if the cache was tampered with mid-run
        raise UserError(f"{len(missing)} generations are missing from the cache after generating")
    stats.update(engine_seconds=round(t_engine, 2), generate_seconds=round(t_gen, 2),
                 tokens_per_second=round(stats["completion_tokens"] / t_gen, 1) if t_gen else 0.0,
                 seconds=round(time.time() - t0, 2))
    return Generations(have, model, stats)
