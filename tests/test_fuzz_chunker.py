"""Fuzzed chunking (worker.chunking.Chunker): any text, any valid size/overlap/max_word_chars, both modes, on the
three tokenizer layouts of tests/modelfactory.py. Chunks are ranges of the original text, in order, trimmed;
together they cover every character the model would see; none holds more words (words mode) or tokens (tokens
mode) than `size`; consecutive ones share at most `overlap`. Invalid settings stop start-up with the variable named."""

from __future__ import annotations

import itertools
import re

import pytest
from fuzzkit import TEXT, fuzz
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer

from modelfactory import WORDS, build_tokenizer
from worker.chunking import Chunker, Span
from worker.settings import ChunkingSettings, SettingsError, load_settings

KINDS = ["bpe", "unigram", "wordpiece"]
_WORD = re.compile(r"\S+")
_TOKENIZERS: dict[str, Tokenizer] = {}

# prose with sentence ends, so that cuts at sentences happen; and any text
SENTENCE = st.lists(st.sampled_from([w for ws in WORDS.values() for w in ws]), min_size=1, max_size=12).map(
    lambda ws: " ".join(ws) + ".")
PROSE = st.lists(st.one_of(SENTENCE, st.sampled_from(["\n\n", " ", "  ", "!", "? ", "… "])), max_size=40).map("".join)
ANY = st.one_of(TEXT, PROSE, st.lists(TEXT, max_size=4).map(" ".join))


@st.composite
def chunk_settings(draw) -> ChunkingSettings:
    size = draw(st.one_of(st.integers(2, 8), st.integers(2, 40)))
    return ChunkingSettings(mode=draw(st.sampled_from(["words", "tokens"])), size=size,
                            overlap=draw(st.one_of(st.just(0), st.integers(0, size - 1))),
                            max_word_chars=draw(st.integers(4, 60)))


def tokenizer(kind: str) -> Tokenizer:
    if kind not in _TOKENIZERS:
        _TOKENIZERS[kind] = build_tokenizer(kind)
    return _TOKENIZERS[kind]


def _token_offsets(c: Chunker, text: str, start: int = 0) -> list[tuple[int, int]]:
    return [(a + start, b + start) for a, b in c.tokenizer.encode(text, add_special_tokens=False).offsets if b > a]


def units(c: Chunker, text: str) -> list[tuple[int, int]]:
    """What the chunker counts, as character ranges: words and the tokens of runs longer than max_word_chars
    (words mode), or tokens (tokens mode)."""
    if c.mode == "tokens":
        return _token_offsets(c, text)
    out: list[tuple[int, int]] = []
    for m in _WORD.finditer(text):
        if m.end() - m.start() > c.max_word_chars:
            out += _token_offsets(c, m.group(), m.start())
        else:
            out.append((m.start(), m.end()))
    return out


def inside(span: Span, unit: tuple[int, int]) -> bool:
    return span.start <= unit[0] and unit[1] <= span.end


def check(c: Chunker, text: str) -> list[Span]:
    spans = c.split(text)
    us = units(c, text)
    # the characters the model sees: every non-space character of a unit
    seen = {i for a, b in us for i in range(a, b) if not text[i].isspace()}
    assert spans, "at least one chunk"
    assert all(0 <= s.start <= s.end <= len(text) for s in spans), spans
    if not seen:
        assert spans == [Span(0, len(text))], "a text with nothing to embed stays whole"
        return spans
    for a, b in itertools.pairwise(spans):
        assert a.start <= b.start and a.end <= b.end, f"chunks out of order: {a} then {b}"
    for s in spans:
        piece = text[s.start:s.end]
        assert piece and piece == piece.strip(), f"chunk {s} is empty or not trimmed: {piece!r}"
    covered = {i for s in spans for i in range(s.start, s.end)}
    lost = sorted(seen - covered)
    assert not lost, f"characters in no chunk: {[text[i] for i in lost[:10]]} at {lost[:10]}"
    regular = [(m.start(), m.end()) for m in _WORD.finditer(text) if m.end() - m.start() <= c.max_word_chars]
    fits = len(us) <= c.size and (c.mode == "tokens" or len(regular) == len(us))
    assert not fits or len(spans) == 1, "a text that fits is one chunk"
    # sizes: in words mode its words, in tokens mode its tokens where each token's characters are its own (byte-
    # level BPE gives the bytes of one character tokens with the same offsets, which a range cannot tell apart)
    counted = regular if c.mode == "words" else us if all(a[1] <= b[0] for a, b in itertools.pairwise(us)) else []
    if counted:
        sizes = [sum(inside(s, u) for u in counted) for s in spans]
        assert max(sizes) <= c.size, f"a chunk of {max(sizes)} {c.mode}; size is {c.size}"
        for a, b in itertools.pairwise(spans):
            shared = sum(inside(a, u) and inside(b, u) for u in counted)
            assert shared <= c.overlap, f"consecutive chunks share {shared} {c.mode}; overlap is {c.overlap}"
    return spans


@pytest.mark.parametrize("kind", KINDS)
@fuzz(200)
@given(cs=chunk_settings(), text=ANY)
def test_chunks_cover_the_text_in_order_within_size(kind, cs, text):
    check(Chunker(cs, tokenizer(kind)), text)


@fuzz(30)
@given(cs=chunk_settings(), words=st.lists(st.sampled_from([w for ws in WORDS.values() for w in ws] + ["x" * 70]),
                                           min_size=100, max_size=600),
       seps=st.sampled_from([" ", "  ", "\n", ". ", " \u3000"]))
def test_long_documents(cs, words, seps):
    text = seps.join(words)
    check(Chunker(cs, tokenizer("unigram")), text)


@fuzz(150)
@given(mode=st.sampled_from(["off", "words", "tokens", "sentences", ""]), size=st.integers(-3, 50),
       overlap=st.integers(-3, 60), max_word_chars=st.integers(-1, 60))
def test_invalid_settings_stop_start_up_with_the_variable_named(mode, size, overlap, max_word_chars):
    problems = {"MODE": mode not in ("off", "words", "tokens"), "SIZE": size < 2,
                "OVERLAP": overlap < 0 or (size >= 2 and overlap >= size), "MAX_WORD_CHARS": max_word_chars < 4}
    fields = {"mode": mode, "size": size, "overlap": overlap, "max_word_chars": max_word_chars}
    if not any(problems.values()):
        assert load_settings(chunking=fields).chunking.overlap == overlap
        return
    with pytest.raises(SettingsError) as e:
        load_settings(chunking=fields)
    for name, wrong in problems.items():
        assert (f"EMBED_CHUNKING__{name}:" in str(e.value)) == wrong, str(e.value)
