"""The build stays vectorised: the number of Python-level function calls it makes must not grow with the number
of rows. A per-row Python loop creeping into build.py (or a template that defeats `render_many`) fails this, on
any machine, without timing anything."""

from __future__ import annotations

import sys

from test_build import gens, titles

from prefsynth.build import BuildConfig, build
from prefsynth.prompts import PromptConfig, Templates


def python_calls(n_titles: int) -> int:
    ts = titles(n_titles)
    df = gens(ts)
    t = Templates(PromptConfig())
    count = 0

    def prof(frame, event, arg):
        nonlocal count
        if event == "call":
            count += 1

    sys.setprofile(prof)
    try:
        build(df, ts, t, BuildConfig(formats="both"))
    finally:
        sys.setprofile(None)
    return count


def test_python_calls_do_not_scale_with_rows():
    python_calls(50)  # first use imports and compiles: not part of the measurement
    small, large = python_calls(500), python_calls(8000)  # 1,000 vs 16,000 generations
    assert large < small * 1.25, (small, large)
