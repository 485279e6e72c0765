"""LightTokenizer renders chat templates and encodes exactly like transformers' tokenizer (without importing it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefsynth.engines import LightTokenizer


@pytest.mark.parametrize("which", ["tiny", "bundled"])
def test_light_tokenizer_renders_and_encodes_like_transformers(which, request):
    from transformers import AutoTokenizer

    folder = request.getfixturevalue("tiny_model" if which == "tiny" else "bundled_model")
    light, ref = LightTokenizer(Path(folder)), AutoTokenizer.from_pretrained(str(folder))
    for messages in ([{"role": "user", "content": "Write a review of \"X < Y\" & more.\n\nThanks"}],
                     [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "héllo"}]):
        text = light.apply_chat_template(messages)
        assert text == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert light.encode(text) == ref(text)["input_ids"]
    for word in ("negative", " Positive"):
        assert light.encode(word, add_special_tokens=False) == ref.encode(word, add_special_tokens=False)
