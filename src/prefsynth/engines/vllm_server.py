"""A running vLLM OpenAI-compatible server (`prefsynth engine` / `make engine`) and the client that sends it work.

The server is started with the in-process engine's settings (`vllm_local.engine_args`) and serves the model under
`served_name`, which names its weights: a client refuses a server holding other weights than its cache keys name.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prefsynth.engines.base import Backend, Output, Request, cuda_available
from prefsynth.engines.light_tokenizer import LightTokenizer
from prefsynth.engines.vllm_local import engine_args
from prefsynth.errors import UserError
from prefsynth.model import ModelRef

if TYPE_CHECKING:
    from prefsynth.generate import GenerateConfig

log = logging.getLogger(__name__)


def served_name(model: ModelRef, dtype: str = "") -> str:
    """The name `prefsynth engine` serves a model under, `<name>@<weights fingerprint>:<dtype>`: a client checks
    that the server holds exactly the weights its cache keys name, and records the dtype the server computes in."""
    return f"{model.name}@{model.fingerprint[:16]}:{dtype}"


def engine_command(model: ModelRef, cfg: GenerateConfig, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a vLLM OpenAI-compatible server with the engine settings `engine_args` gives the
    in-process engine, for `prefsynth engine` / `make engine`."""
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
                   "temperature": self.cfg.temperature, "top_p": self.cfg.top_p, "seed": r.seed,
                   # vLLM's server takes its sampling extensions in the body beside the OpenAI fields
                   "repetition_penalty": self.cfg.repetition_penalty, "stop": self.cfg.stop_strings() or None}
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
