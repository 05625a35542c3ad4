"""Shared fixtures: small Model2Vec models built offline, and the Kafka broker for integration tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from modelfactory import build_model

# A reference call must never change the worker's threading (model2vec sets this on >10k texts).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory: pytest.TempPathFactory):
    """build(kind, **options) -> folder; folders are cached per option set for the session."""
    cache: dict[tuple, Path] = {}

    def build(kind: str = "wordpiece", **options) -> Path:
        key = (kind, tuple(sorted(options.items(), key=lambda kv: kv[0])))
        key = (kind, repr(key))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"model-{kind}")
            cache[key] = build_model(folder, kind, **options)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def small_model(model_factory) -> Path:
    return model_factory("wordpiece", dim=32)
