"""The one place that picks an engine for a config, loads it, and keeps it: one loaded engine per (model, backend,
dtype, sampling) per process, so generation and judging share it, and `close_backends` stops them all."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from prefsynth.engines.base import Backend, resolve_dtype
from prefsynth.engines.transformers import TransformersBackend
from prefsynth.engines.vllm_local import VLLMBackend
from prefsynth.engines.vllm_server import ServerBackend
from prefsynth.errors import UserError
from prefsynth.model import ModelRef

if TYPE_CHECKING:
    from prefsynth.generate import GenerateConfig

_BACKENDS: dict[tuple, Backend] = {}


def vllm_available() -> bool:
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
    ident = (model.path, kind, dtype, tuple(sorted((k, str(v)) for k, v in cfg.sampling().items())),
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
