"""Stop strings and the repetition penalty, the two sampling settings generation adds to temperature and top-p."""

from __future__ import annotations

import pytest

from prefsynth.engines import Request, TransformersBackend, get_backend
from prefsynth.generate import GenerateConfig, request_seed
from prefsynth.model import resolve_model


def _texts(backend, n: int = 6) -> dict[str, tuple[str, str]]:
    reqs = [Request(f"k{i}", backend.chat(f"title number {i}"), request_seed(f"k{i}")) for i in range(n)]
    return {o.key: (o.text, o.finish_reason) for o in backend.generate(reqs)}


@pytest.mark.parametrize("engine", ["transformers", "vllm"])
def test_stop_string_cuts_the_same_sample_where_it_first_appears(engine, tiny_model, transformers_cfg, vllm_cfg):
    """Same seeds with and without a stop string: the stopped review is the free one up to (not including) the
    first occurrence, finished as "stop"; a review without the string is unchanged."""
    make = transformers_cfg if engine == "transformers" else vllm_cfg
    model = resolve_model(str(tiny_model))
    free = _texts(get_backend(model, make(stop=[], repetition_penalty=1.0, max_tokens=16)))
    stop = "e"  # a letter the tiny model's byte-level output is full of
    cut = _texts(get_backend(model, make(stop=[stop], repetition_penalty=1.0, max_tokens=16)))
    assert sum(stop in text for text, _ in free.values()) >= 2  # the check below has something to cut
    for key, (text, _) in free.items():
        if stop in text:
            assert cut[key] == (text[:text.index(stop)], "stop"), key
        else:
            assert cut[key][0] == text


def test_stop_escapes_from_the_command_line():
    assert GenerateConfig(stop=["\\n\\n", "END"]).stop_strings() == ["\n\n", "END"]
    assert GenerateConfig(stop=[]).stop_strings() == [] and "stop" not in GenerateConfig(stop=[]).sampling()
    # new settings join the cache key only when on: reviews cached before they existed keep their keys
    assert "repetition_penalty" not in GenerateConfig(repetition_penalty=1.0).sampling()
    assert GenerateConfig().sampling()["stop"] == ["\n\n"]


def test_transformers_repetition_penalty_is_vllms_rule(tiny_model, transformers_cfg):
    """Seen tokens: a positive logit is divided by the penalty, a negative one multiplied; others untouched."""
    import torch

    backend = TransformersBackend(resolve_model(str(tiny_model)), transformers_cfg(repetition_penalty=2.0,
                                                                                  temperature=0.0))
    logits = torch.tensor([[3.0, -1.0, 2.5, 0.5]])
    seen = torch.tensor([[0, 1, 0]])  # token 0 twice: penalised once, like vLLM's mask
    # unpenalised, token 0 wins; penalised, 3.0 -> 1.5 and token 2 (2.5) wins
    assert int(backend._sample(logits.clone(), [None], seen)[0]) == 2
    assert int(backend._sample(logits.clone(), [None], torch.tensor([[3, 3]]))[0]) == 0


def test_vllm_receives_both_settings(tiny_model, vllm_cfg):
    backend = get_backend(resolve_model(str(tiny_model)), vllm_cfg(stop=["\\n\\n"], repetition_penalty=1.3))
    params = backend._params(7)
    assert params.stop == ["\n\n"] and params.repetition_penalty == 1.3 and params.seed == 7
