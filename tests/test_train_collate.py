"""Train stage, prompt-side truncation (`prefsynth.train.collate`): the completion survives max_length."""

from __future__ import annotations

from prefsynth.train import fit_prompt


def test_fit_prompt_keeps_the_completion_and_the_end_of_the_prompt():
    prompt, comps = fit_prompt(list(range(200)), [[1000] * 60, [2000] * 90], 128)
    assert prompt == list(range(162, 200))  # 128 - 90 = 38 prompt tokens, the last ones
    assert comps == [[1000] * 60, [2000] * 90]
    # A completion that alone fills the window still leaves a quarter of it to the prompt.
    prompt, comps = fit_prompt(list(range(200)), [[7] * 300], 128)
    assert prompt == list(range(168, 200)) and comps == [[7] * 96]
    assert fit_prompt([1, 2], [[3]], 128) == ([1, 2], [[3]])
