"""The generate stage: the resumable cache and what its keys cover (the engines: tests/engines/)."""

from __future__ import annotations

import pytest

from prefsynth.generate import GenerateConfig, generate
from prefsynth.prompts import PromptConfig, Templates

TITLES = ["Attention Is All You Need", "Deep Residual Learning for Image Recognition", "Adam: A Method for "
          "Stochastic Optimization"]


@pytest.fixture(scope="module")
def templates():
    return Templates(PromptConfig())


def _cfg(tiny_model, tmp_path, **kw) -> GenerateConfig:
    kw.setdefault("candidates", 1)  # one review per (title, polarity); candidates: tests/test_rounds.py
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
