"""The fast path (worker.fastpath): same vectors as the exact path and as model2vec, self-check at load, cache
bound and counters. Models are the small trained tokenizers of tests/modelfactory.py (bpe = byte-level BPE,
unigram = NFKC + Metaspace, wordpiece = BERT normalizer + pre-tokenizer)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model2vec import StaticModel
from test_encoder import TEXTS
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from modelfactory import WORDS, build_tokenizer, corpus, sample_texts
from worker import encoder as encoder_module
from worker.bench.synthetic.models import write_model
from worker.encoder import Encoder
from worker.fastpath import MAX_CROSSING_TOKENS, FastPathUnsupported, Scheme, analyze, check_corpus
from worker.model import load_model

KINDS = ["bpe", "unigram", "wordpiece"]

EDGE_TEXTS = [
    "double  space", "triple   space and  more", " leading", "trailing ", "  ", " ", "",
    "tab\tinside", "new\nline", "nbsp\u00a0here", "ideographic\u3000space", "´accent ͺypo ゛mark", "´start",
    "ͺstart", "゛start", "▁marker ▁", "Ġ ## x", "Hello hello HELLO hElLo", "ΟΔΟΣ οδός Σ", "İstanbul ıi",
    "e\u0301 cafe\u0301 \u0301lonely", "ﬁ Ｆｕｌｌ ① ㍿ ²", "[UNK] [CLS] <unk> <pad> <s> x[UNK]y", "[unk] <UNK>",
    "👨‍👩‍👧 🧑‍💻 👍🏽 🇫🇷 ❤️", "東京は日本の首都です。", "don't it's we'll 'quoted' ''", "a" * 120 + " b",
]
ALL_TEXTS = TEXTS + EDGE_TEXTS



@pytest.fixture(autouse=True)
def _reference_tokenizer(monkeypatch):
    """The piece cache runs in front of the reference tokenizer: with a faster library (gigatoken, for byte-level
    BPE) `auto` leaves it off, so these tests pin `tokenizers` unless they name a library."""
    real = encoder_module.select
    monkeypatch.setattr(encoder_module, "select",
                        lambda tok, path, choice, texts: real(tok, path, "tokenizers" if choice == "auto" else choice,
                                                               texts))

def reference(folder, texts, **kw):
    ref = StaticModel.from_pretrained(str(folder), **kw)
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        return ref.encode(texts, use_multiprocessing=False)
    finally:
        assert os.environ.get("TOKENIZERS_PARALLELISM") == before


def pair(folder, **kw):
    """(fast encoder, exact encoder) on the same folder."""
    fast = Encoder(load_model(folder), **kw)
    exact = Encoder(load_model(folder), fast_path="off", **kw)
    return fast, exact


def assert_same(fast: Encoder, exact: Encoder, texts) -> np.ndarray:
    got = fast.encode_batch(texts)
    want = exact.encode_batch(texts)
    np.testing.assert_array_equal(got.token_counts, want.token_counts)
    np.testing.assert_array_equal(got.vectors, want.vectors)  # same ids, same pooling: bit-identical
    return got.vectors


# --- parity ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("variant", ["plain", "weights", "mapping", "weights+mapping"])
def test_fast_equals_exact_and_model2vec(model_factory, kind, normalize, variant):
    folder = model_factory(kind, normalize=normalize, weights="weights" in variant, mapping="mapping" in variant)
    fast, exact = pair(folder)
    assert fast.fast_path_status == "on"
    assert exact.fast_path_status == "off: disabled by setting"
    got = assert_same(fast, exact, ALL_TEXTS)
    assert np.abs(got - reference(folder, ALL_TEXTS)).max() <= 1e-6
    hits, misses, entries, nbytes = fast.fast_path_stats()
    assert hits > 0 and misses > 0 and entries >= misses and nbytes > 0
    again = assert_same(fast, exact, ALL_TEXTS)  # from the cache: no new piece
    np.testing.assert_array_equal(again, got)
    assert fast.fast_path_stats()[1] == misses


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("max_length", [None, 1, 3, 16, 64])
def test_truncation(model_factory, kind, max_length):
    folder = model_factory(kind)
    fast, exact = pair(folder, max_length=max_length)
    assert fast.fast_path_status == "on"
    got = assert_same(fast, exact, ALL_TEXTS)
    assert np.abs(got - reference(folder, ALL_TEXTS, max_length=max_length)).max() <= 1e-6
    if max_length is not None:
        assert fast.encode_batch(ALL_TEXTS).token_counts.max() <= max_length


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_compact_tables(model_factory, kind, dtype):
    fast, exact = pair(model_factory(kind, dtype=dtype, weights=True, mapping=True))
    assert fast.fast_path_status == "on"
    assert_same(fast, exact, ALL_TEXTS)


def test_dimensions_view(model_factory):
    folder = model_factory("unigram", weights=True)
    fast = Encoder(load_model(folder).with_dimensions(8))
    exact = Encoder(load_model(folder).with_dimensions(8), fast_path="off")
    assert fast.fast_path_status == "on"
    assert assert_same(fast, exact, ALL_TEXTS).shape == (len(ALL_TEXTS), 8)


def test_batch_independence_and_order(model_factory):
    fast, exact = pair(model_factory("bpe"))
    together = fast.encode(ALL_TEXTS)
    alone = np.vstack([fast.encode([t]) for t in ALL_TEXTS[::-1]])[::-1]
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together, exact.encode(ALL_TEXTS))


def test_gated_texts_take_the_exact_path(model_factory):
    fast, exact = pair(model_factory("wordpiece"))
    fp = fast._fast
    assert fp is not None
    texts = ["ok text", "tab\there", "has [UNK] inside", "nbsp\u00a0x", "zwj 👨‍👩‍👧", "fine 東京", "nul\x00x"]
    bad = fp.gate(texts)
    assert bad is not None and bad.tolist() == [False, False, True, False, False, False, True]
    assert_same(fast, exact, texts)
    bpe, bpe_exact = pair(model_factory("bpe"))
    texts = ["a  b", "a b", "a\n b", "a \nb", "a\t\tb", "a\u00a0 b", " a", "a "]
    assert bpe._fast is not None and bpe._fast.gate(texts).tolist() == [True, False, True, False, False, True,
                                                                         False, False]
    assert_same(bpe, bpe_exact, texts)
    uni, _ = pair(model_factory("unigram"))
    assert uni._fast is not None and uni._fast.gate(["a  b", "a b"]) is None  # Metaspace: every space splits


# --- property tests ---------------------------------------------------------------------------------------

_PIECES = st.one_of(
    st.sampled_from([w for ws in WORDS.values() for w in ws]),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=10),
    st.text(st.characters(codec="ascii"), max_size=10),
    st.sampled_from([" ", " ", " ", "  ", "   ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2003", "\u200b"]),
    st.sampled_from(list(".,;:!?'\"()[]{}-—…«»¿¡、。#@$%&*+=/\\|~^`")),
    st.sampled_from(["東京", "日本語", "北京", "한국어", "ไทย", "🙂", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "e\u0301", "\u0301",
                     "\u0308", "´", "ͺ", "゛", "ﬁ", "Ｆ", "①", "ẞ", "ß", "İ", "ı", "Σ", "ς", "▁", "Ġ", "##", "'s",
                     "n't", "'ll"]),
    st.sampled_from(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "<unk>", "<pad>", "<s>", "[unk]"]),
    st.text(st.sampled_from("abé東🙂"), min_size=30, max_size=150),  # very long words
)
_TEXT = st.lists(_PIECES, max_size=25).map("".join)
_PRINTABLE_PIECES = st.one_of(
    st.sampled_from([w for ws in WORDS.values() for w in ws]),
    st.text(st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")), max_size=10),
    st.just(" "),
    st.sampled_from(list(".,;:!?'\"()-—…、。")),
)
_PRINTABLE_TEXT = st.lists(_PRINTABLE_PIECES, max_size=25).map("".join)

_ENCODERS: dict[tuple, tuple[Encoder, Encoder, StaticModel]] = {}


@pytest.fixture(scope="module")
def encoders(model_factory):
    def get(kind: str, max_length: int | None = 512):
        key = (kind, max_length)
        if key not in _ENCODERS:
            folder = model_factory(kind, weights=True)
            fast, exact = pair(folder, max_length=max_length)
            assert fast.fast_path_status == "on"
            _ENCODERS[key] = (fast, exact, StaticModel.from_pretrained(str(folder), max_length=max_length))
        return _ENCODERS[key]

    return get


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("max_length", [512, 16])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(_TEXT, min_size=1, max_size=6))
def test_property_random_unicode(encoders, kind, max_length, texts):
    fast, exact, ref = encoders(kind, max_length)
    got = assert_same(fast, exact, texts)
    assert np.abs(got - ref.encode(texts, use_multiprocessing=False)).max() <= 1e-6


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(_PRINTABLE_TEXT, min_size=1, max_size=6))
def test_property_printable_texts_take_the_fast_path(encoders, kind, texts):
    fast, exact, _ = encoders(kind)
    assert fast._fast is not None
    bad = fast._fast.gate(texts)
    if kind != "bpe":  # byte-level BPE leaves runs of spaces to the exact path
        special = [any(c in t for c in fast._fast.contents) for t in texts]  # "[UNK]" can be drawn too
        assert (bad is None and not any(special)) or (bad is not None and bad.tolist() == special)
    assert_same(fast, exact, texts)


@pytest.mark.parametrize("kind", ["unigram", "wordpiece"])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(_TEXT.filter(lambda t: not any(s in t for s in ("[", "<", "\x00"))), min_size=1, max_size=6))
def test_property_any_whitespace_takes_the_fast_path(encoders, kind, texts):
    """Tabs, newlines, NBSP, ideographic spaces, controls: inside a piece, the tokenizer handles them."""
    fast, exact, _ = encoders(kind)
    assert fast._fast is not None
    bad = fast._fast.gate(texts)
    assert bad is None or not bad.any()
    assert_same(fast, exact, texts)


# --- other tokenizer layouts ---------------------------------------------------------------------------------


def _spm_bpe(prepend: str) -> Tokenizer:
    """A SentencePiece-style BPE: trained on Metaspace words, so no token joins a word to a following space."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=prepend)
    tok.train_from_iterator(corpus(), trainer=trainers.BpeTrainer(vocab_size=800, special_tokens=["<pad>", "<unk>"],
                                                                  show_progress=False))
    return tok


def _gemma_like() -> Tokenizer:
    tok = _spm_bpe("never")
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    return tok


def _llama_like() -> Tokenizer:
    tok = _spm_bpe("always")
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    return tok


def _metaspace_unsplit() -> Tokenizer:
    tok = _spm_bpe("first")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    return tok


def _changed(kind, change):
    def make() -> Tokenizer:
        tok = build_tokenizer(kind)
        change(tok)
        return tok
    return make


N, P = normalizers, pre_tokenizers
VARIANTS = {
    "bert-cased": _changed("wordpiece", lambda t: setattr(t, "normalizer", N.BertNormalizer(lowercase=False))),
    "wordpiece-whitespace": _changed("wordpiece", lambda t: setattr(t, "pre_tokenizer", P.Whitespace())),
    "wordpiece-split-punct-digits": _changed("wordpiece", lambda t: setattr(t, "pre_tokenizer", P.Sequence(
        [P.WhitespaceSplit(), P.Punctuation(), P.Digits(individual_digits=True)]))),
    "metaspace-first": _changed("unigram", lambda t: setattr(t, "pre_tokenizer", P.Metaspace(prepend_scheme="first"))),
    "metaspace-never": _changed("unigram", lambda t: setattr(t, "pre_tokenizer", P.Metaspace(prepend_scheme="never"))),
    "metaspace-lowercase": _changed("unigram", lambda t: setattr(t, "normalizer", N.Sequence(
        [N.NFKC(), N.Lowercase()]))),
    "whitespace-split-metaspace": _changed("unigram", lambda t: setattr(t, "pre_tokenizer", P.Sequence(
        [P.WhitespaceSplit(), P.Metaspace()]))),
    "bytelevel-prefix-space": _changed("bpe", lambda t: setattr(t, "pre_tokenizer", P.ByteLevel(
        add_prefix_space=True))),
    "bytelevel-nfc-lowercase": _changed("bpe", lambda t: setattr(t, "normalizer", N.Sequence(
        [N.NFC(), N.Lowercase()]))),
    "gemma-like whole-text BPE": _gemma_like,
    "llama-like whole-text BPE": _llama_like,
    "metaspace split=false BPE": _metaspace_unsplit,
}
_VARIANT_ENCODERS: dict[str, tuple[Encoder, Encoder, StaticModel]] = {}


@pytest.fixture(scope="module")
def variant_encoders(tmp_path_factory):
    def get(name: str):
        if name not in _VARIANT_ENCODERS:
            folder = write_model(tmp_path_factory.mktemp("variant"), VARIANTS[name](), dim=16, weights=True)
            fast, exact = pair(folder, max_length=64)
            _VARIANT_ENCODERS[name] = (fast, exact, StaticModel.from_pretrained(str(folder), max_length=64))
        return _VARIANT_ENCODERS[name]

    return get


@pytest.mark.parametrize("name", list(VARIANTS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.one_of(_TEXT, _PRINTABLE_TEXT), min_size=1, max_size=6))
def test_property_other_layouts(variant_encoders, name, texts):
    fast, exact, ref = variant_encoders(name)
    assert fast.fast_path_status == "on", fast.fast_path_status
    got = assert_same(fast, exact, texts)
    assert np.abs(got - ref.encode(texts, use_multiprocessing=False)).max() <= 1e-6


def _cross_word_bpe(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "\u2581")  # trained without pre-tokenizer: merges cross words
    tok.train_from_iterator(corpus(), trainer=trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>"],
                                                                  show_progress=False))
    return tok


def test_whole_text_bpe_whose_tokens_cross_spaces_gates_those_texts(tmp_path):
    """Tokens across a word boundary ('>\u2581</' in Gemma 3) send the texts that hold them to the exact path;
    every other text takes the fast path, filled piece by piece, with bit-identical vectors."""
    tok = _cross_word_bpe(800)
    crossing = [t for t in tok.get_vocab() if any(t[i] == "\u2581" and t[i - 1] != "\u2581" for i in range(1, len(t)))]
    assert 0 < len(crossing) <= MAX_CROSSING_TOKENS
    folder = write_model(tmp_path / "m", tok, dim=16)
    fast, exact = Encoder(load_model(folder)), Encoder(load_model(folder), fast_path="off")
    assert fast.fast_path_status == "on", fast.fast_path_status
    texts = sample_texts(400, seed=5) + [c.replace("\u2581", " ") + " tail" for c in crossing[:50]]
    assert_same(fast, exact, texts)
    assert fast._fast is not None
    gated = fast._fast.gate(texts)
    assert gated is not None and gated[-50:].all() and not gated[:400].all()


def test_whole_text_bpe_with_too_many_cross_word_tokens_is_off(tmp_path, monkeypatch):
    import worker.fastpath.analysis as fp

    monkeypatch.setattr(fp, "MAX_CROSSING_TOKENS", 3)
    enc = Encoder(load_model(write_model(tmp_path / "m", _cross_word_bpe(800), dim=16)))
    assert enc.fast_path_status.startswith("off: BPE over a whole text with")
    assert "join a character to the space after it" in enc.fast_path_status


# --- self-check at load -------------------------------------------------------------------------------------


def _custom_model(tmp_path, kind, change):
    tok = build_tokenizer(kind)
    change(tok)
    return write_model(tmp_path / kind, tok, dim=16)


@pytest.mark.parametrize("kind,change,reason", [
    ("wordpiece", lambda t: setattr(t, "normalizer", normalizers.Sequence([normalizers.Strip(), normalizers.NFKC()])),
     "normalizer Strip is not implemented"),
    ("unigram", lambda t: setattr(t, "pre_tokenizer", pre_tokenizers.CharDelimiterSplit("x")),
     "pre-tokenizer CharDelimiterSplit is not implemented"),
    ("unigram", lambda t: setattr(t, "pre_tokenizer", pre_tokenizers.Metaspace(split=False)),
     "Metaspace with split=false"),
    ("bpe", lambda t: setattr(t, "pre_tokenizer", None), "no pre-tokenizer"),
    ("unigram", lambda t: setattr(t, "pre_tokenizer", None), "no pre-tokenizer"),
    ("bpe", lambda t: setattr(t, "normalizer", normalizers.NFKC()), "normalizer NFKC is not implemented"),
])
def test_unsupported_tokenizer_is_off_with_the_reason(tmp_path, caplog, kind, change, reason):
    folder = _custom_model(tmp_path, kind, change)
    with caplog.at_level(logging.INFO, logger="worker.encoder"):
        enc = Encoder(load_model(folder))
    assert enc.fast_path_status.startswith("off: ") and reason in enc.fast_path_status
    assert any(reason in str(getattr(r, "reason", "")) for r in caplog.records)
    assert enc.fast_path_stats() == (0, 0, 0, 0)
    # still exact, still model2vec
    assert np.abs(enc.encode(ALL_TEXTS) - reference(folder, ALL_TEXTS)).max() <= 1e-6


def _wrong_scheme(real):
    """A scheme that is wrong for byte-level BPE: it drops the space that belongs to the next word's token."""
    def analyze_wrong(tok):
        scheme = real(tok)
        return Scheme(spaced=False, space_runs=True, first_alias=False, replacement=scheme.replacement,
                      description="wrong")
    return analyze_wrong


def test_self_check_turns_a_wrong_fast_path_off(model_factory, monkeypatch, caplog):
    folder = model_factory("bpe")
    monkeypatch.setattr(encoder_module, "analyze", _wrong_scheme(analyze))
    with caplog.at_level(logging.WARNING, logger="worker.encoder"):
        enc = Encoder(load_model(folder))
    assert enc.fast_path_status.startswith("off: self-check text ")
    assert "tokenize to" in enc.fast_path_status
    assert enc.fast_path_verification is not None and not enc.fast_path_verification.ok
    assert any(r.getMessage() == "fast path off: self-check failed" for r in caplog.records)
    assert np.abs(enc.encode(ALL_TEXTS) - reference(folder, ALL_TEXTS)).max() <= 1e-6


def test_forced_on_logs_the_failed_check(model_factory, monkeypatch, caplog):
    monkeypatch.setattr(encoder_module, "analyze", _wrong_scheme(analyze))
    with caplog.at_level(logging.WARNING, logger="worker.encoder"):
        enc = Encoder(load_model(model_factory("bpe")), fast_path="on")
    assert enc.fast_path_status == "on"
    assert any("forced on" in r.getMessage() and "tokenize to" in r.reason for r in caplog.records)


def test_check_texts_are_part_of_the_self_check(model_factory, monkeypatch):
    folder = model_factory("unigram")
    enc = Encoder(load_model(folder), fast_path_check_texts=["extra one", "extra two"])
    assert enc.fast_path_status == "on"
    builtin = len(check_corpus(enc.tokenizer))
    assert enc.fast_path_verification is not None and enc.fast_path_verification.texts == builtin + 2

    # A check text decides where the built-in corpus does not: a scheme that lowercases the keys of a cased
    # model passes a lowercase-only corpus, not a check text with a capital.
    real = analyze

    def lying(tok):
        scheme = real(tok)
        return Scheme(spaced=scheme.spaced, space_runs=scheme.space_runs, first_alias=scheme.first_alias,
                      replacement=scheme.replacement, description="lying", ascii_lower=True)

    monkeypatch.setattr(encoder_module, "analyze", lying)
    monkeypatch.setattr(encoder_module, "check_corpus", lambda tok: ["kafka topic", "latency of the topic"])
    assert Encoder(load_model(folder)).fast_path_status == "on"
    enc = Encoder(load_model(folder), fast_path_check_texts=["the Kafka topic"])
    assert enc.fast_path_status.startswith("off: self-check text 2 'the Kafka topic'")


def test_a_fast_path_that_raises_falls_back_to_the_exact_path(model_factory, monkeypatch, caplog):
    from worker import fastpath

    fast, exact = pair(model_factory("wordpiece"))
    texts = ["kafka topic", "latency"]

    def broken(self, texts):
        raise RuntimeError("bug")

    monkeypatch.setattr(fastpath.FastPath, "tokenize", broken)
    with caplog.at_level(logging.ERROR, logger="worker.encoder"):
        got = fast.encode_batch(texts)
    np.testing.assert_array_equal(got.vectors, exact.encode(texts))
    assert fast.fast_path_status == "off: raised RuntimeError: bug" and fast._fast is None
    assert any("fast path off" in r.getMessage() for r in caplog.records)
    # An input both paths reject is the input's problem: it raises, and a working fast path stays on.
    monkeypatch.undo()
    fast, _ = pair(model_factory("wordpiece"))
    with pytest.raises(TypeError):
        fast.encode_batch(["ok", "\ud800"])  # a lone surrogate: the tokenizer takes no such string
    assert fast.fast_path_status == "on"


def test_a_self_check_that_raises_leaves_the_fast_path_off(model_factory, monkeypatch):
    def broken(*a, **kw):
        raise KeyError("model")

    monkeypatch.setattr(encoder_module, "analyze", broken)
    enc = Encoder(load_model(model_factory("unigram")))
    assert enc.fast_path_status == "off: self-check raised KeyError: 'model'"
    assert np.abs(enc.encode(ALL_TEXTS) - reference(model_factory("unigram"), ALL_TEXTS)).max() <= 1e-6


def test_off_setting_and_bad_value(small_model):
    enc = Encoder(load_model(small_model), fast_path="off")
    assert enc.fast_path_status == "off: disabled by setting" and enc.fast_path_verification is None
    with pytest.raises(ValueError, match="fast_path must be auto, on or off"):
        Encoder(load_model(small_model), fast_path="sometimes")  # type: ignore[arg-type]


def test_analyze_the_three_kinds():
    assert analyze(build_tokenizer("wordpiece")).spaced is False
    assert analyze(build_tokenizer("wordpiece")).ascii_lower is True
    uni = analyze(build_tokenizer("unigram"))
    assert uni.spaced and uni.space_runs and uni.first_alias and uni.replacement == "\u2581"
    bpe = analyze(build_tokenizer("bpe"))
    assert bpe.spaced and not bpe.space_runs and not bpe.first_alias
    tok = Tokenizer.from_str(build_tokenizer("bpe").to_str())
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="isolated")
    with pytest.raises(FastPathUnsupported, match="Split"):
        analyze(tok)


def test_added_tokens_matched_after_normalization_gate_their_texts(tmp_path):
    """XLM-R style: added tokens with normalized=true are matched on the normalized text; a text whose normalized
    form holds one takes the exact path, every other text the fast path (it used to turn the fast path off)."""
    folder = _custom_model(tmp_path, "wordpiece", lambda t: t.add_tokens(["kafka topic"]))  # uncased: lowercased
    fast, exact = Encoder(load_model(folder)), Encoder(load_model(folder), fast_path="off")
    assert fast.fast_path_status == "on", fast.fast_path_status
    texts = ["KAFKA TOPIC here", "a Kafka Topic", "kafka topics", "kafka  topic", "plain kafka text"] + sample_texts(50)
    assert_same(fast, exact, texts)
    assert fast._fast is not None
    gated = fast._fast.gate(texts)
    assert gated is not None and gated[:3].all() and not gated[4:].any()
    ref = StaticModel.from_pretrained(str(folder))
    assert np.abs(fast.encode(texts) - ref.encode(texts, use_multiprocessing=False)).max() <= 1e-6


# --- cache bound and counters --------------------------------------------------------------------------------


def test_counters(model_factory):
    fast, _ = pair(model_factory("wordpiece"))
    assert fast.fast_path_stats() == (0, 0, 0, 0)  # the self-check leaves nothing behind
    fast.encode(["kafka latency kafka"])
    hits, misses, entries, nbytes = fast.fast_path_stats()
    assert (hits, misses, entries) == (1, 2, 2) and nbytes > 0
    fast.encode(["Kafka LATENCY"])  # an uncased model: ASCII case does not make a new piece
    assert fast.fast_path_stats()[:3] == (3, 2, 2)
    fast.encode(["throughput", "has [UNK] inside"])  # the second text takes the exact path: no lookup
    assert fast.fast_path_stats()[:3] == (3, 3, 3)


def test_first_word_alias(model_factory):
    fast, exact = pair(model_factory("unigram"))
    fast.encode(["kafka topic"])  # keys "\0kafka" (first word) and "topic" (" topic"); the first is an alias
    assert fast.fast_path_stats()[:3] == (0, 2, 3)  # of "kafka": 2 pieces tokenized, 3 keys
    fast.encode(["topic kafka"])  # "\0topic" is an alias of the cached "topic" (Metaspace prepends the space)
    assert fast.fast_path_stats()[:3] == (2, 2, 4)
    assert_same(fast, exact, ["topic kafka", "kafka topic", "´topic", "topic ´topic"])


@pytest.mark.parametrize("kind", KINDS)
def test_cache_bound_and_eviction(model_factory, kind):
    folder = model_factory(kind)
    limit_mb = 0.004  # ~4 KB: a few dozen pieces
    fast, exact = pair(folder, fast_path_cache_mb=limit_mb)
    assert fast.fast_path_status == "on"
    texts = sample_texts(600, seed=11, max_words=12) + EDGE_TEXTS
    for i in range(0, len(texts), 50):
        batch = texts[i:i + 50]
        assert_same(fast, exact, batch)
        nbytes = fast.fast_path_stats()[3]
        assert nbytes <= limit_mb * 1024 * 1024
        fp = fast._fast
        assert fp is not None and fp.bytes == nbytes == int(fp._bytes_of.sum())  # the books balance
        live = fp._used[:len(fp._keys)] > 0
        assert fp.entries == sum(len(k) if isinstance(k, list) else 1 for k in fp._keys if k is not None)
        assert int(live.sum()) == sum(k is not None for k in fp._keys)
    assert fast._fast.evictions > 0
    # One batch with more distinct pieces than the cache holds: split in halves, exact for what never fits.
    big = [" ".join(sample_texts(40, seed=s)) for s in range(3)] + ["x" * 3000]
    assert_same(fast, exact, big)
    assert fast.fast_path_stats()[3] <= limit_mb * 1024 * 1024


def test_cache_bytes_grow_with_entries(model_factory):
    fast, _ = pair(model_factory("unigram"))
    fast.encode(sample_texts(50, seed=1))
    _, _, e1, b1 = fast.fast_path_stats()
    fast.encode(sample_texts(500, seed=2, max_words=30))
    _, _, e2, b2 = fast.fast_path_stats()
    assert e2 > e1 and b2 > b1
    assert 60 < b2 / e2 < 400  # an entry is its key, its ids and ~100 bytes of bookkeeping


def test_open_encoder_passes_the_settings(model_factory, tmp_path):
    from worker.app import open_encoder
    from worker.settings import ModelSettings

    folder = model_factory("wordpiece")
    check = tmp_path / "check.txt"
    check.write_text("first check line\nsecond one\n\n", encoding="utf-8")
    enc, _ = open_encoder(ModelSettings(path=str(folder), fast_path_check_file=str(check), fast_path_cache_mb=3))
    assert enc.fast_path_status == "on"
    assert enc.fast_path_verification is not None
    assert enc.fast_path_verification.texts == len(check_corpus(enc.tokenizer)) + 3
    assert enc._fast is not None and enc._fast.cache_bytes == 3 * 1024 * 1024
    off, _ = open_encoder(ModelSettings(path=str(folder), fast_path="off"))
    assert off.fast_path_status == "off: disabled by setting"


# --- benchmark harness ----------------------------------------------------------------------------------------


def test_bench_encoder_fast_path_and_whole_processes(model_factory, tmp_path, capsys):
    import argparse
    import json

    from worker.bench import encoder as bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    out = tmp_path / "bench.json"
    args = p.parse_args(["--model", str(model_factory("unigram", dim=32)), "--texts", "150", "--repeat", "1",
                         "--sets", "short", "--threads", "single", "--fast-path-only", "--e2e", "--json", str(out)])
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    assert "## Fast path vs model2vec" in printed and "## Whole processes" in printed
    assert "## Throughput" not in printed  # --fast-path-only skips the exact-path tables
    report = json.loads(out.read_text())
    (row,) = report["results"]
    f = row["fast"]
    assert f["status"] == "on" and f["cold_s"] > 0 and f["warm_s"] > 0 and f["model2vec_s"] > 0
    assert f["max_abs_diff_model2vec"] <= 1e-6 and f["max_abs_diff_exact"] == 0
    assert 0 < f["hit_rate_cold"] < f["hit_rate_warm"] == 1.0 and f["misses"] > 0 and f["bytes"] > 0
    (e2e,) = report["e2e"]
    assert e2e["fast_path"] == "on" and e2e["max_abs_diff"] <= 1e-6 and e2e["same_shape"]
    assert e2e["ours_s"] > 0 and e2e["model2vec_s"] > 0
