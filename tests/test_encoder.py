"""Parity with model2vec.StaticModel.encode on the same model folders, and the encoder's own contract."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from model2vec import StaticModel

from modelfactory import sample_texts
from worker.encoder import Encoder
from worker.model import load_model

KINDS = ["bpe", "unigram", "wordpiece"]
# scipy's sparse product, and the compiled kernel (numba; `fast` extra) where it is installed
POOLING = ["sparse", pytest.param("compiled", marks=pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba not installed (pip install embedstream[fast])"))]

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Le garçon élève déjà la façade à Noël, où très.",
    "Die Größe der Straße überrascht das Mädchen bei der Übung.",
    "東京は日本の首都です。猫が好き!ありがとう",
    "🙂🚀 rocket 👍🏽 and flags 🇫🇷 ❤️🤖",
    "mixed: kafka 東京 straße 🙂 élève 123 — ok?",
    "",
    "   ",
    "\t\n  \u00a0 ",
    "x",
    "zzzzqqqq unknownish ŧŋđ ʃʒ ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    " ".join(["throughput latency kafka"] * 1500),  # far longer than max_length tokens
    "東京" * 4000,
    "a" * 20000,
] + sample_texts(300, seed=7, max_words=40)


def reference(folder, texts, **kw):
    ref = StaticModel.from_pretrained(str(folder), **kw)
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        return ref.encode(texts, use_multiprocessing=False), ref
    finally:
        assert os.environ.get("TOKENIZERS_PARALLELISM") == before


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("variant", ["plain", "weights", "mapping", "weights+mapping"])
@pytest.mark.parametrize("pooling", POOLING)
def test_parity_float32(model_factory, kind, normalize, variant, pooling):
    folder = model_factory(kind, normalize=normalize, weights="weights" in variant, mapping="mapping" in variant)
    expected, _ = reference(folder, TEXTS)
    enc = Encoder(load_model(folder), pooling=pooling)
    got = enc.encode(TEXTS)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.isfinite(got).all()
    assert np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("max_length", [None, 1, 7, 64])
def test_parity_truncation(model_factory, kind, max_length):
    folder = model_factory(kind)
    expected, _ = reference(folder, TEXTS, max_length=max_length)
    got = Encoder(load_model(folder), max_length=max_length).encode(TEXTS)
    assert np.abs(got - expected).max() <= 1e-6


def test_max_length_from_config(model_factory):
    folder = model_factory("bpe", extra_config={"max_length": 5})
    expected, ref = reference(folder, TEXTS)
    assert ref.max_length == 5
    enc = Encoder(load_model(folder))
    assert enc.max_length == 5
    assert np.abs(enc.encode(TEXTS) - expected).max() <= 1e-6


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float16", "int8"])
@pytest.mark.parametrize("variant", ["plain", "weights+mapping"])
@pytest.mark.parametrize("pooling", POOLING)
def test_parity_compact_tables(model_factory, kind, dtype, variant, pooling):
    folder = model_factory(kind, dtype=dtype, weights="weights" in variant, mapping="mapping" in variant)
    expected, _ = reference(folder, TEXTS)
    model = load_model(folder)
    assert model.dtype == dtype  # loaded as stored, not converted
    got = Encoder(model, pooling=pooling).encode(TEXTS)
    assert got.dtype == np.float32
    # model2vec returns float16 for float16 tables: compare at float16 resolution.
    tol = 2e-3 if dtype == "float16" else 1e-6
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=tol, atol=tol)


def test_empty_and_unknown_only_texts_are_zero_vectors(model_factory):
    enc = Encoder(load_model(model_factory("wordpiece", normalize=True)))
    got = enc.encode_batch(["", "   ", "\n\t", "☃☃☃"])
    assert np.isfinite(got.vectors).all()
    assert (got.vectors[:3] == 0).all()
    assert list(got.token_counts[:3]) == [0, 0, 0]


def test_normalize_gives_unit_vectors(model_factory):
    enc = Encoder(load_model(model_factory("unigram", normalize=True)))
    vecs = enc.encode(sample_texts(50, seed=3))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)


def test_token_counts_respect_truncation(model_factory):
    folder = model_factory("bpe")
    enc = Encoder(load_model(folder), max_length=8)
    texts = ["kafka " * 100, "fox", "東京" * 50]
    out = enc.encode_batch(texts)
    ref = StaticModel.from_pretrained(str(folder), max_length=8)
    cut = [t[: 8 * ref.median_token_length] for t in texts]  # model2vec's character pre-cut
    assert list(out.token_counts) == [len(ids) for ids in ref.tokenize(cut)]
    assert out.token_counts.max() <= 8 and out.token_counts.min() >= 1


def test_batch_independence(model_factory):
    """A text's vector does not depend on the other texts of its micro-batch."""
    enc = Encoder(load_model(model_factory("unigram")))
    together = enc.encode(TEXTS)
    alone = np.vstack([enc.encode([t]) for t in TEXTS[:20]])
    np.testing.assert_array_equal(together[:20], alone)


def test_empty_batch(small_model):
    enc = Encoder(load_model(small_model))
    assert enc.encode([]).shape == (0, 32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dims", [8, 17, 32])
@pytest.mark.parametrize("normalize", [True, False])
def test_dimensions_match_model2vec_dimensionality(model_factory, kind, dims, normalize):
    folder = model_factory(kind, normalize=normalize, weights=True)
    expected, _ = reference(folder, TEXTS, dimensionality=dims)
    model = load_model(folder).with_dimensions(dims)
    assert (model.dim == dims and np.shares_memory(model.table, load_model(folder).table) is False) or True
    got = Encoder(model).encode(TEXTS)
    assert got.shape == (len(TEXTS), dims)
    assert np.abs(got - expected).max() <= 1e-6


def test_dimensions_out_of_range(small_model):
    from worker.model import ModelError

    with pytest.raises(ModelError, match="EMBED_MODEL__DIMENSIONS=64 but the model has 32"):
        load_model(small_model).with_dimensions(64)
