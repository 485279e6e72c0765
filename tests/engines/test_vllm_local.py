"""vLLM in this process: the same numbers as the transformers engine, every request streamed back."""

from __future__ import annotations

import math

import pytest

from prefsynth.engines import Request, TransformersBackend, VLLMBackend, get_backend
from prefsynth.generate import request_seed
from prefsynth.model import resolve_model


@pytest.mark.integration
def test_vllm_and_transformers_agree_on_label_logprobs(tiny_model, vllm_cfg, transformers_cfg):
    """The same fp32 weights through two engines: next-token log-probs must match closely, and vLLM generation
    must stream every request back with token counts and finish reasons."""
    cfg = vllm_cfg()
    model = resolve_model(str(tiny_model))
    vb = get_backend(model, cfg)
    assert isinstance(vb, VLLMBackend)
    tb = TransformersBackend(model, transformers_cfg())
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

    # Progress: between engine steps the running count includes requests still in flight, and at the end it has
    # grown by exactly the tokens of the finished reviews.
    seen, finished = [], []
    start = vb.tokens_generated
    vb.on_step = lambda: seen.append((vb.tokens_generated - start, len(finished)))
    try:
        finished += [o.completion_tokens for o in vb.generate(reqs)]
    finally:
        vb.on_step = None
    assert vb.tokens_generated - start == sum(finished)
    assert any(tokens > 0 and done == 0 for tokens, done in seen), seen  # counted before anything finished
