"""train.compare: merged adapters load as plain folders; the comparison counts wins, rates and validity right."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from prefsynth.model import resolve_model
from prefsynth.model import merge_adapter
from prefsynth.train.compare import Written, compare, held_out_titles


def _written(name: str, negative: list[float], valid: list[bool]) -> Written:
    n = len(negative)
    return Written(name, pl.DataFrame({"title": [f"t{i}" for i in range(n)], "text": ["a b c"] * n,
                                       "negative": negative, "lexicon": [0.5] * n, "valid": valid,
                                       "reasons": [[] for _ in range(n)]}), 0.0)


def test_compare_counts_rates_wins_and_validity():
    base = _written("base", [0.2, 0.3, 0.6, 0.4], [True, False, True, True])
    tuned = _written("t", [0.9, 0.1, 0.7, 0.4], [True, True, False, True])
    c = compare(base, tuned)
    assert c["titles"] == 4 and c["valid_base"] == 0.75 and c["valid_tuned"] == 0.75
    h = c["head"]
    assert (h["rate_base"], h["rate_tuned"]) == (0.25, 0.5)
    assert (h["wins"], h["losses"], h["ties"]) == (2, 1, 1) and h["p"] == 1.0
    assert c["valid_and_target_tuned"] == 0.25  # t0 only: t2 is negative but invalid
    assert c["lexicon"]["ties"] == 4 and c["lexicon"]["p"] == 1.0


def test_a_clear_shift_is_significant():
    base = _written("base", [0.2] * 20, [True] * 20)
    tuned = _written("t", [0.9] * 20, [True] * 20)
    c = compare(base, tuned)
    assert c["head"]["wins"] == 20 and c["head"]["p"] < 1e-5


def test_held_out_titles_never_include_built_ones():
    assert held_out_titles(["a", "b", "c", "d"], {"b", "d"}, 5) == ["a", "c"]


def test_merged_adapter_is_a_plain_model_folder(tiny_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = resolve_model(str(tiny_model))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    merged = merge_adapter(Path(base.path), tmp_path / "adapter", tmp_path / "merged")
    config, base_config = (json.loads((f / "config.json").read_text()) for f in (merged, tiny_model))
    assert config["rope_theta"] == base_config["rope_theta"] and config["architectures"] == base_config["architectures"]
    again = AutoModelForCausalLM.from_pretrained(merged)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        want = model(ids).logits
        got = again(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(got, plain, atol=1e-4)


def test_compare_of_no_titles_is_empty_not_an_error():
    c = compare(_written("b", [], []), _written("t", [], []))
    assert c["titles"] == 0 and c["head"]["wins"] == 0
