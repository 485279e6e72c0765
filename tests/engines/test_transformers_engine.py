"""The transformers engine: per-request seeds, and the same engine on a model already in memory (training)."""

from __future__ import annotations

from prefsynth.engines import Request, TransformersBackend
from prefsynth.generate import request_seed
from prefsynth.model import resolve_model


def test_transformers_seed_is_per_request_not_per_batch(tiny_model, transformers_cfg):
    cfg = transformers_cfg(batch_size=8)
    backend = TransformersBackend(resolve_model(str(tiny_model)), cfg)
    reqs = [Request(f"k{i}", backend.chat(f"prompt number {i} " * (i + 1)), request_seed(f"k{i}")) for i in range(5)]
    together = {o.key: o.text for o in backend.generate(reqs)}
    alone = {o.key: o.text for r in reqs for o in backend.generate([r])}
    assert together == alone


def test_from_loaded_matches_the_engine_that_loads(tiny_model, transformers_cfg):
    """`from_loaded` (training's evaluation engine) on the same weights: same end tokens, left padding, and the same
    reviews for the same seeds as the engine that loads the model itself."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = transformers_cfg(batch_size=8)
    ref = resolve_model(str(tiny_model))
    loading = TransformersBackend(ref, cfg)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    loaded = TransformersBackend.from_loaded(ref, model, tokenizer, cfg)
    assert loaded.model_ is model and loaded.tokenizer is tokenizer and tokenizer.padding_side == "left"
    assert loaded.eos == loading.eos and str(loaded.device) == loading.device and loaded.cfg is cfg
    reqs = [Request(f"k{i}", loading.chat(f"title {i}"), request_seed(f"k{i}")) for i in range(4)]
    assert {o.key: o.text for o in loaded.generate(reqs)} == {o.key: o.text for o in loading.generate(reqs)}
