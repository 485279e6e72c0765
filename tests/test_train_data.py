"""Train stage, data (`prefsynth.train.data`): the order KTO's sequential sampler sees its rows in."""

from __future__ import annotations

import polars as pl
import pytest

from prefsynth.errors import UserError
from prefsynth.train import kto_order


def test_kto_order_mixes_labels_in_every_pair():
    # Worst case for KTO's sequential sampler: all desirable rows first.
    df = pl.DataFrame({"prompt": [f"p{i}" for i in range(10)], "completion": [f"c{i}" for i in range(10)],
                       "label": [True] * 6 + [False] * 4})
    a, b = kto_order(df, 0), kto_order(df, 1)
    labels = a["label"].to_list()
    assert all(labels[i] != labels[i + 1] for i in range(0, 8, 2))  # 4 mixed pairs, then the 2 spare desirables
    assert labels[8:] == [True, True]
    assert sorted(a["prompt"]) == sorted(df["prompt"]) and a["prompt"].to_list() != b["prompt"].to_list()
    with pytest.raises(UserError, match="desirable and undesirable"):
        kto_order(df.filter(pl.col("label")), 0)
