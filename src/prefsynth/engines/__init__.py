"""Generation engines behind one contract (`Backend`): vLLM in this process, a vLLM server, transformers.

- `base`: the contract (`Request`, `Output`, `Backend`) and dtype/device helpers
- `registry`: picks, loads and caches the engine for a config (`get_backend`), stops them (`close_backends`)
- `vllm_local`: vLLM's offline engine in this process, and `engine_args`, the vLLM settings for a config
- `vllm_server`: the `prefsynth engine` server's command line and the client that sends it work
- `light_tokenizer`: the client's tokenizer, without importing transformers
- `transformers`: the transformers engine (fallback, and training's evaluation on a loaded model)
- `cpu_sampler`: vLLM on CPU in this process, a faster top-p kernel, and its vLLM plugin (imports torch: not
  imported here)
"""

from prefsynth.engines.base import Backend, Output, Request, cuda_available, plain_chat, resolve_dtype
from prefsynth.engines.light_tokenizer import LightTokenizer
from prefsynth.engines.registry import close_backends, get_backend, vllm_available
from prefsynth.engines.transformers import TransformersBackend
from prefsynth.engines.vllm_local import VLLMBackend, engine_args
from prefsynth.engines.vllm_server import ServerBackend, engine_command, served_name

__all__ = [
    "Backend", "LightTokenizer", "Output", "Request", "ServerBackend", "TransformersBackend", "VLLMBackend",
    "close_backends", "cuda_available", "engine_args", "engine_command", "get_backend", "plain_chat",
    "resolve_dtype", "served_name", "vllm_available",
]
