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
    engine_url: str | None = opt(None, "a running vLLM server (`make engine`, e.g. http://127.0.0.1:8765): generate "
                                       "and judge there instead of loading the model in this process",
                                 alias="engine")
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


def plain_chat(messages: list[dict]) -> str:
    """A conversation as text, for models without a chat template."""
    return "\n\n".join(m["content"] for m in messages) + "\n"


class Backend(ABC):
    name: str
    in_process = False  # True when the engine has no worker processes of its own to stop

    def __init__(self, model: ModelRef, cfg: GenerateConfig):
        self.model = model
        self.cfg = cfg
        self.dtype = cfg.dtype  # what the engine computes in; subclasses resolve "auto"

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
        return plain_chat(messages)

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


def engine_args(model: ModelRef, cfg: GenerateConfig) -> tuple[dict, dict[str, str]]:
    """vLLM engine arguments and environment for this config: written once, used by the in-process engine
    (`VLLMBackend`) and by the server `prefsynth engine` starts."""
    max_len = min(cfg.max_model_len, _context_length(model.path))
    kwargs = dict(
        model=model.path, dtype=resolve_dtype(cfg.dtype), seed=cfg.seed, enforce_eager=cfg.enforce_eager,
        max_num_seqs=cfg.max_num_seqs, max_model_len=max_len,
        tensor_parallel_size=cfg.tensor_parallel_size, enable_prefix_caching=True,
    )
    env: dict[str, str] = {}
    if cuda_available():
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    else:
        # vLLM parses this as an integer number of GiB ("2.0" is rejected)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(cfg.kv_cache_gib)))
        # A prefill split over two steps makes vLLM rewind the request's random generator, which CPU
        # generators cannot do ("CPU Generator does not use offset") once requests carry their own seed:
        # schedule whole prefills only.
        kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(8192, max_len))
        # vllm-cpu's default KV block is 128 tokens, and prefix caching only shares whole blocks: the judge's
        # shared prefix (~45 tokens) was never reused. 32 is the smallest block its attention accepts.
        kwargs["block_size"] = cfg.cpu_block_size
    return kwargs, env


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model: ModelRef, cfg: GenerateConfig):
        super().__init__(model, cfg)
        kwargs, env = engine_args(model, cfg)
        self.dtype = kwargs["dtype"]
        for k, v in env.items():
            os.environ.setdefault(k, v)
        if not cuda_available() and cfg.cpu_in_process and cfg.tensor_parallel_size == 1:
            from prefsynth import vllm_cpu

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


def served_name(model: ModelRef, dtype: str = "") -> str:
    """The name `prefsynth engine` serves a model under, `<name>@<weights fingerprint>:<dtype>`: a client checks
    that the server holds exactly the weights its cache keys name, and records the dtype the server computes in."""
    return f"{model.name}@{model.fingerprint[:16]}:{dtype}"


def engine_command(model: ModelRef, cfg: GenerateConfig, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a vLLM OpenAI-compatible server with the engine settings `engine_args` gives the
    in-process engine, for `prefsynth engine` / `make engine`."""
    import sys

    kwargs, env = engine_args(model, cfg)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", host, "--port", str(port),
            "--served-model-name", served_name(model, kwargs["dtype"]),
            # sampling parameters come from the request alone, as in-process (no defaults from the model's files)
            "--generation-config", "vllm", "--disable-uvicorn-access-log"]
    for k, v in kwargs.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            argv.append(flag if v else "--no-" + flag[2:])
        else:
            argv += [flag, str(v)]
    if not cuda_available():
        # The server's engine runs in its own process; by default vLLM keeps one of its cores for the HTTP
        # front end, which on two cores halves decoding. The fast sampler reaches that process as a plugin.
        env.update(VLLM_CPU_NUM_OF_RESERVED_CPU="0", PREFSYNTH_FAST_SAMPLER="1")
    return argv, env


class LightTokenizer:
    """The part of a Hugging Face tokenizer a client of the engine uses (encode, chat template), read with the
    `tokenizers` library and jinja2 the way transformers renders chat templates: importing transformers would also
    import torch, ~2.5 s of every run on two cores. `ServerBackend` checks it against the server's own rendering."""

    def __init__(self, folder: Path):
        import json

        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = json.loads((folder / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text()
        if isinstance(template, list):  # named templates: transformers uses "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template = template
        self.special = {k: (v["content"] if isinstance(v, dict) else v) for k, v in config.items()
                        if k.endswith("_token") and isinstance(v, (str, dict))}
        self._compiled = None
        if template:
            import datetime

            import jinja2.ext
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise jinja2.exceptions.TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols])
            env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: \
                json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
            self._compiled = env.from_string(template)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        assert not tokenize and self._compiled is not None
        return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.special)


class ServerBackend(Backend):
    """A running vLLM OpenAI-compatible server (`make engine`): no model load, no torch import in this process.
    Every request carries its own seed, as in-process; judging uses the server's `logprob_token_ids`."""

    name = "vllm-server"
    RETRIES = 4

    def __init__(self, model: ModelRef, cfg: GenerateConfig):
        super().__init__(model, cfg)
        import httpx

        self.url = cfg.engine_url.rstrip("/").removesuffix("/v1")
        prefix = served_name(model)
        try:
            served = httpx.get(f"{self.url}/v1/models", timeout=10).raise_for_status().json()
        except (httpx.HTTPError, ValueError) as e:
            raise UserError(f"no vLLM engine answering at {self.url} ({type(e).__name__}); start one with "
                            f"`make engine` or drop --engine") from None
        ids = [str(m.get("id")) for m in served.get("data", [])]
        match = [i for i in ids if i.startswith(prefix)]
        if not match:
            raise UserError(f"the engine at {self.url} serves {', '.join(ids) or 'nothing'}, not {prefix}<dtype> "
                            f"(this run's model and weights); start it with `make engine MODEL={model.name}`")
        self.model_id = match[0]
        self.dtype = self.model_id[len(prefix):]
        self._tok = self._client_tokenizer(Path(model.path))
        # Enough requests in flight that the server's scheduler always has the next batch queued.
        self.concurrency = max(1, 2 * cfg.max_num_seqs)

    def _client_tokenizer(self, folder: Path):
        """LightTokenizer when it renders and tokenizes a probe conversation exactly as the server does (asked via
        its /tokenize), else transformers' tokenizer."""
        import httpx

        probe = [{"role": "user", "content": "Probe: is 'x < y' & \"z\" fine?\nYes."}]
        if self.cfg.system_prompt is not None:
            probe.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        try:
            light = LightTokenizer(folder)
            if not light.chat_template:
                return light  # prompts are plain text, tokenized by the same tokenizers library as the server's
            mine = light.encode(light.apply_chat_template(probe))
            theirs = httpx.post(f"{self.url}/tokenize", timeout=30, json={
                "model": self.model_id, "messages": probe, "add_generation_prompt": True,
                "add_special_tokens": True}).raise_for_status().json()["tokens"]
            if mine == theirs:
                return light
            log.info("local chat template rendering differs from the engine's; using transformers' tokenizer")
        except Exception as e:  # noqa: BLE001 - any surprise: the slower, exact path
            log.info("light tokenizer unavailable (%s); using transformers' tokenizer", type(e).__name__)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))

    @property
    def tokenizer(self):
        return self._tok

    def _stream(self, bodies: list[dict]) -> Iterator[tuple[int, dict]]:
        """POST every body to /v1/completions concurrently; yield (index, response) as each one finishes."""
        import asyncio
        import queue
        import threading

        import httpx

        done = object()
        q: queue.Queue = queue.Queue()

        async def post(client: httpx.AsyncClient, body: dict) -> dict:
            for attempt in range(self.RETRIES + 1):
                try:
                    r = await client.post("/v1/completions", json=body)
                    if r.status_code < 500:
                        break
                except httpx.TransportError as e:
                    if attempt == self.RETRIES:
                        raise UserError(f"the engine at {self.url} stopped answering ({type(e).__name__})") from None
                await asyncio.sleep(0.5 * 2 ** attempt)
            if r.status_code != 200:
                try:
                    msg = r.json().get("error", {}).get("message") or r.text
                except ValueError:
                    msg = r.text
                raise UserError(f"the engine at {self.url} refused a request: HTTP {r.status_code} "
                                f"{' '.join(str(msg).split())[:200]}")
            return r.json()

        async def main() -> None:
            sem = asyncio.Semaphore(self.concurrency)
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            async with httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(600, connect=10),
                                         limits=limits) as client:
                async def one(i: int, body: dict) -> None:
                    async with sem:
                        q.put((i, await post(client, body)))

                await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))

        def runner() -> None:
            try:
                asyncio.run(main())
            except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
                q.put(e)
            q.put(done)

        threading.Thread(target=runner, name="prefsynth-engine-client", daemon=True).start()
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item

    def generate(self, requests: list[Request]) -> Iterator[Output]:
        bodies = [{"model": self.model_id, "prompt": r.prompt, "max_tokens": self.cfg.max_tokens,
                   "temperature": self.cfg.temperature, "top_p": self.cfg.top_p, "seed": r.seed}
                  for r in requests]
        for i, res in self._stream(bodies):
            c = res["choices"][0]
            yield Output(requests[i].key, c["text"], int(res["usage"]["prompt_tokens"]),
                         int(res["usage"]["completion_tokens"]), str(c["finish_reason"]))

    def label_logprobs(self, prompts: list[str], token_ids: list[int]) -> Iterator[tuple[int, list[float]]]:
        bodies = [{"model": self.model_id, "prompt": p, "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
                   "logprob_token_ids": list(token_ids), "return_tokens_as_token_ids": True} for p in prompts]
        for i, res in self._stream(bodies):
            top = res["choices"][0]["logprobs"]["top_logprobs"][0]  # {"token_id:123": logprob}
            yield i, [float(top.get(f"token_id:{t}", float("-inf"))) for t in token_ids]


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
        self.dtype = resolve_dtype(cfg.dtype)
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
    if cfg.engine_url:
        if kind == "transformers":
            raise UserError("--engine sends work to a vLLM server; it cannot be combined with backend transformers")
        kind = "server"
    elif kind == "auto":
        kind = "vllm" if vllm_available() else "transformers"
    if kind == "vllm" and not vllm_available():
        raise UserError("backend 'vllm' requested but vLLM is not installed (run `make install`)")
    dtype = cfg.dtype if kind == "server" else resolve_dtype(cfg.dtype)  # resolving imports torch
    ident = (model.path, kind, dtype, cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.seed,
             cfg.system_prompt, cfg.engine_url)
    if ident not in _BACKENDS:
        cls = {"vllm": VLLMBackend, "server": ServerBackend}.get(kind, TransformersBackend)
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
    dtype: str | None = None  # of the engine this run generated with (None: everything came from the cache)


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
    dtype = None
    if todo:
        t1 = time.time()
        backend = get_backend(model, cfg)
        dtype = backend.dtype
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
    return Generations(have, model, stats, dtype)
