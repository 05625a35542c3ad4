"""The compiled pooling kernel against scipy's sparse product: the same vectors, bit for bit, on every table dtype
and layout; float16 converted exactly; the background compile and what happens without numba."""

from __future__ import annotations

import numpy as np
import pytest

from worker import pooling
from worker.bench.synthetic.texts import paragraph_texts, short_texts
from worker.encoder import Encoder
from worker.model import load_model
from worker.pooling import Pooler

pytest.importorskip("numba")

DIM = 48
ROWS = 500


def table(dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "int8":
        return rng.integers(-128, 128, (ROWS, DIM)).astype(np.int8)
    values = rng.standard_normal((ROWS, DIM)) * rng.choice([1e-6, 1e-2, 1.0, 3e2], (ROWS, 1))
    return values.astype(dtype)


def batch(seed: int = 1, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 40, n).astype(np.int64)  # empty texts included
    counts[:3] = [0, 1, 0]
    flat = np.minimum(rng.zipf(1.3, int(counts.sum())), ROWS) - 1
    return flat.astype(np.int64), counts


def both(p: Pooler, flat: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sparse = p.means(flat, counts, sparse=True)
    assert p.compile_now() >= 0 and p.status == "compiled"
    return sparse, p.means(flat, counts)


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8", "float64"])
@pytest.mark.parametrize("variant", ["plain", "weights", "mapping", "weights+mapping", "columns"])
def test_compiled_equals_sparse_bit_for_bit(dtype, variant):
    t = table(dtype)
    flat, counts = batch()
    weights = mapping = None
    if "weights" in variant:
        weights = np.random.default_rng(2).uniform(0.01, 3, ROWS + 20).astype(np.float32)
    if "mapping" in variant:  # a larger vocabulary mapped onto the table's rows
        mapping = np.random.default_rng(3).integers(0, ROWS, ROWS + 20).astype(np.int64)
        flat = np.minimum(flat * 3 % (ROWS + 20), ROWS + 19)
    if variant == "columns":  # EMBED_MODEL__DIMENSIONS: a column slice, not contiguous
        t = t[:, :DIM // 2]
    sparse, compiled = both(Pooler(t, weights, mapping), flat, counts)
    assert compiled.dtype == np.float32 and compiled.shape == (counts.size, t.shape[1])
    np.testing.assert_array_equal(compiled, sparse)
    assert (compiled[counts == 0] == 0).all()


def test_every_float16_value_converts_exactly():
    bits = np.arange(65536, dtype=np.uint16)
    one_row = bits.view(np.float16).reshape(1, -1)
    p = Pooler(one_row, None, None)
    p.compile_now()
    got = p.sums(np.zeros(1, np.int64), np.ones(1, np.int64))[0]
    want = one_row[0].astype(np.float32)
    nan = np.isnan(want)
    assert np.isnan(got[nan]).all()
    # 0 + (-0) is +0 in both paths; every other value, infinities and subnormals included, is exact
    np.testing.assert_array_equal(got[~nan], want[~nan] + np.float32(0))


def test_inf_and_nan_rows_propagate_like_the_sparse_product():
    t = table("float16")
    t[4, 0], t[5, 1], t[6, 2] = np.inf, -np.inf, np.nan
    flat = np.array([4, 1, 5, 6, 2], np.int64)
    counts = np.array([2, 1, 2], np.int64)
    sparse, compiled = both(Pooler(t, None, None), flat, counts)
    np.testing.assert_array_equal(compiled, sparse)  # assert_array_equal treats NaN == NaN
    assert np.isposinf(compiled[0, 0]) and np.isneginf(compiled[1, 1]) and np.isnan(compiled[2, 2])


def test_the_encoder_gives_the_same_vectors_either_way(model_factory):
    model = load_model(model_factory("unigram", dtype="float16", weights=True, normalize=True))
    texts = short_texts(200, seed=4) + paragraph_texts(20, seed=4) + ["", "x"]
    sparse = Encoder(model, pooling="sparse").encode(texts)
    compiled_enc = Encoder(model, pooling="compiled")
    assert compiled_enc.pooler.status == "compiled"
    np.testing.assert_array_equal(compiled_enc.encode(texts), sparse)


def test_gemma_like_model_compiled_equals_sparse(gemma_model):
    enc = Encoder(load_model(gemma_model("float16")), pooling="compiled")
    flat, counts = enc.tokenize(short_texts(2000, seed=9) + paragraph_texts(200, seed=9))
    np.testing.assert_array_equal(enc.pooler.means(flat, counts), enc.pooler.means(flat, counts, sparse=True))


def test_background_compile_serves_sparse_until_ready():
    p = Pooler(table("float16"), None, None)
    assert p.status.startswith("sparse until")
    flat, counts = batch()
    before = p.means(flat, counts)  # nothing compiled yet: the sparse product
    p.compile_later()
    assert p.wait_compiled(120)
    assert p.status == "compiled"
    np.testing.assert_array_equal(p.means(flat, counts), before)


def test_without_numba(monkeypatch):
    why = "numba is not installed (pip install embedstream[fast])"
    monkeypatch.setattr(pooling, "compiled_available", lambda **_: why)
    p = Pooler(table("float32"), None, None)
    assert p.status == "sparse" and not p.wants_compiled
    p.compile_later()
    assert not p.wait_compiled(1)
    with pytest.raises(ValueError, match="EMBED_MODEL__POOLING=compiled but numba is not installed"):
        Pooler(table("float32"), None, None, "compiled")
    with pytest.raises(ValueError, match="pooling must be one of"):
        Pooler(table("float32"), None, None, "fast")


def test_sparse_setting_never_compiles():
    p = Pooler(table("float16"), None, None, "sparse")
    p.compile_later()
    assert p.compile_now() == 0.0 and p.status == "sparse"
