"""Chunk boundaries: words never split, sentences respected, CJK and giant words by token windows."""

from __future__ import annotations

import itertools

import pytest
from tokenizers import Tokenizer

from worker.chunking import Chunker
from worker.settings import ChunkingSettings


@pytest.fixture(scope="module")
def tokenizer(model_factory) -> Tokenizer:
    return Tokenizer.from_file(str(model_factory("unigram") / "tokenizer.json"))


def chunks(tokenizer, text, **kw):
    c = Chunker(ChunkingSettings(**kw), tokenizer)
    return [text[s.start:s.end] for s in c.split(text)], c.split(text)


def test_short_text_is_one_chunk(tokenizer):
    texts, spans = chunks(tokenizer, "  just a few words.  ", mode="words", size=10)
    assert texts == ["just a few words."] and (spans[0].start, spans[0].end) == (2, 19)


def test_words_mode_never_splits_a_word_and_covers_every_word(tokenizer):
    words = [f"w{i}" for i in range(1000)]
    text = "  ".join(words)
    got, _ = chunks(tokenizer, text, mode="words", size=100)
    assert len(got) == 10 and all(len(c.split()) == 100 for c in got)
    assert [w for c in got for w in c.split()] == words


def test_overlap_repeats_the_last_words(tokenizer):
    text = " ".join(f"w{i}" for i in range(250))
    got, _ = chunks(tokenizer, text, mode="words", size=100, overlap=10)
    assert got[1].split()[:10] == got[0].split()[-10:]
    assert got[-1].split()[-1] == "w249"


def test_cut_follows_a_sentence_end_in_the_last_quarter(tokenizer):
    sentence = "one two three four five six seven eight nine ten."  # 10 words
    text = " ".join([sentence] * 3) + " tail words here"
    got, _ = chunks(tokenizer, text, mode="words", size=12)
    assert got[0].endswith("ten.") and len(got[0].split()) == 10


def test_whitespace_runs_and_offsets_point_into_the_original(tokenizer):
    text = "a\t\t b\n\n\nc    d " * 20
    got, spans = chunks(tokenizer, text, mode="words", size=7)
    for chunk, span in zip(got, spans, strict=True):
        assert chunk == text[span.start:span.end] and chunk == chunk.strip()
    assert sum(len(c.split()) for c in got) == 80


def test_japanese_without_spaces_falls_back_to_token_windows(tokenizer):
    text = "東京は日本の首都です。猫が好き!ありがとう" * 60
    _, spans = chunks(tokenizer, text, mode="words", size=30)
    assert len(spans) > 1
    assert spans[0].start == 0 and spans[-1].end == len(text)
    for a, b in itertools.pairwise(spans):
        assert a.end <= b.start + 1  # contiguous, no overlap by default
    assert "".join(text[s.start:s.end] for s in spans) == text


def test_single_10000_character_word(tokenizer):
    text = "x" * 10_000
    _, spans = chunks(tokenizer, text, mode="words", size=50)
    assert len(spans) > 1 and spans[0].start == 0 and spans[-1].end == len(text)
    assert "".join(text[s.start:s.end] for s in spans) == text


def test_tokens_mode_windows_and_word_starts(tokenizer):
    text = " ".join(["kafka throughput latency vectors"] * 100)
    c = Chunker(ChunkingSettings(mode="tokens", size=64, overlap=8), tokenizer)
    spans = c.split(text)
    assert len(spans) > 1
    for s in spans:
        n = len(tokenizer.encode(text[s.start:s.end], add_special_tokens=False).ids)
        assert n <= 64 + 2
        assert s.start == 0 or text[s.start - 1] == " "  # cut at a word start
    assert spans[-1].end == len(text)


def test_empty_text(tokenizer):
    assert len(Chunker(ChunkingSettings(mode="words"), tokenizer).split("")) == 1
