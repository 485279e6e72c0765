"""Fixtures the engine tests share (the session-wide ones, tiny model and free port, live in tests/conftest.py)."""

from __future__ import annotations

import pytest

from prefsynth.generate import GenerateConfig


@pytest.fixture
def vllm_cfg(tiny_model, tmp_path):
    """Settings of the in-process vLLM engine on the tiny model. Every engine test asks for the same engine (the
    registry keys engines by model and sampling, not by cache folder), so a session loads it once."""
    def make(**kw) -> GenerateConfig:
        return GenerateConfig(**{"model": str(tiny_model), "backend": "vllm", "max_tokens": 8, "kv_cache_gib": 1,
                                 "cache_dir": tmp_path / "cache", "max_model_len": 512} | kw)

    return make


@pytest.fixture
def transformers_cfg(tiny_model, tmp_path):
    def make(**kw) -> GenerateConfig:
        return GenerateConfig(**{"model": str(tiny_model), "backend": "transformers", "max_tokens": 12,
                                 "cache_dir": tmp_path / "cache"} | kw)

    return make
