"""The engine registry: which engine a config gets."""

from __future__ import annotations

import pytest

from prefsynth.engines import get_backend
from prefsynth.errors import UserError
from prefsynth.generate import GenerateConfig
from prefsynth.model import resolve_model


def test_engine_cannot_be_combined_with_transformers(tiny_model, tmp_path):
    with pytest.raises(UserError, match="cannot be combined"):
        get_backend(resolve_model(str(tiny_model)),
                    GenerateConfig(model=str(tiny_model), backend="transformers", engine_url="http://127.0.0.1:1"))
