"""generate: both backends behind one interface, per-request seeds, the resumable cache."""

from __future__ import annotations

import math

import pytest

from prefsynth.generate import (GenerateConfig, Request, TransformersBackend, VLLMBackend, generate, get_backend,
                                request_seed)
from prefsynth.model import resolve_model
from prefsynth.prompts import PromptConfig, Templates

TITLES = ["Attention Is All You Need", "Deep Residual Learning for Image Recognition", "Adam: A Method for "
          "Stochastic Optimization"]


@pytest.fixture(scope="module")
def templates():
    return Templates(PromptConfig())


def _cfg(tiny_model, tmp_path, **kw) -> GenerateConfig:
    return GenerateConfig(model=str(tiny_model), backend="transformers", max_tokens=12,
                          cache_dir=tmp_path / "cache", **kw)


def test_generate_then_rerun_generates_nothing(tiny_model, tmp_path, templates):
    cfg = _cfg(tiny_model, tmp_path)
    first = generate(TITLES, templates, cfg)
    assert first.stats["generated"] == 6 and first.stats["reused"] == 0
    assert first.rows.height == 6
    assert set(first.rows.get_column("polarity")) == {"negative", "positive"}
    assert all(0 < n <= 12 for n in first.rows.get_column("completion_tokens"))
    cache = tmp_path / "cache" / "generations"
    assert len(list(cache.glob("*.parquet"))) == 1 and not list(cache.glob("journal-*"))  # compacted on close
    again = generate(TITLES + ["A New Title"], templates, cfg)
    assert again.stats["reused"] == 6 and again.stats["generated"] == 2
    merged = again.rows.join(first.rows, on="key", suffix="_first")
    assert merged.height == 6 and (merged["text"] == merged["text_first"]).all()


def test_cache_key_covers_sampling_and_templates(tiny_model, tmp_path, templates):
    generate(TITLES[:1], templates, _cfg(tiny_model, tmp_path))
    hotter = generate(TITLES[:1], templates, _cfg(tiny_model, tmp_path, temperature=1.3))
    assert hotter.stats["generated"] == 2


def test_transformers_seed_is_per_request_not_per_batch(tiny_model, tmp_path):
    cfg = _cfg(tiny_model, tmp_path, batch_size=8)
    backend = TransformersBackend(resolve_model(str(tiny_model)), cfg)
    reqs = [Request(f"k{i}", backend.chat(f"prompt number {i} " * (i + 1)), request_seed(f"k{i}")) for i in range(5)]
    together = {o.key: o.text for o in backend.generate(reqs)}
    alone = {o.key: o.text for r in reqs for o in backend.generate([r])}
    assert together == alone


@pytest.mark.integration
def test_vllm_and_transformers_agree_on_label_logprobs(tiny_model, tmp_path):
    """The same fp32 weights through two engines: next-token log-probs must match closely, and vLLM generation
    must stream every request back with token counts and finish reasons."""
    cfg = GenerateConfig(model=str(tiny_model), backend="vllm", max_tokens=8, kv_cache_gib=1,
                         cache_dir=tmp_path / "cache", max_model_len=512)
    model = resolve_model(str(tiny_model))
    vb = get_backend(model, cfg)
    assert isinstance(vb, VLLMBackend)
    tb = TransformersBackend(model, _cfg(tiny_model, tmp_path))
    prompts = [vb.chat("is this review negative or positive?"), vb.chat("a longer prompt " * 7)]
    ids = [5, 17, 42, 100]
    a, b = dict(vb.label_logprobs(prompts, ids)), dict(tb.label_logprobs(prompts, ids))
    assert sorted(a) == sorted(b) == [0, 1]
    for row_a, row_b in zip((a[0], a[1]), (b[0], b[1])):
        for x, y in zip(row_a, row_b):
            assert math.isfinite(x) and abs(x - y) < 2e-3
    reqs = [Request(f"k{i}", vb.chat(f"title {i}"), request_seed(f"k{i}")) for i in range(6)]
    outs = list(vb.generate(reqs))
    assert sorted(o.key for o in outs) == sorted(r.key for r in reqs)
    assert all(1 <= o.completion_tokens <= 8 and o.finish_reason in ("stop", "length") for o in outs)
    again = {o.key: o.text for o in vb.generate(reqs)}
    assert again == {o.key: o.text for o in outs}  # per-request seeds: the same request, the same review
