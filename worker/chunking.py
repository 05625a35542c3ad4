"""Split long documents into chunks before encoding: a static embedding averages every token, so a
5,000-word document becomes a diluted vector; the model card advises 150-300 word chunks.

Rules (documented in README):
- `words`: windows of `size` words, `overlap` words shared with the previous window. A window ends after
  a sentence end (`.`, `!`, `?`, `。`, `！`, `？`, `…` closing a word) when one falls in its last quarter,
  so chunks follow sentences where they can. Words are never split, except a "word" longer than
  `max_word_chars` characters (text without spaces: Japanese, Chinese, or one enormous token), which is
  cut into windows of tokens instead.
- `tokens`: windows of `size` tokens of the model's tokenizer, `overlap` tokens shared; a cut moves back
  to the start of a word (a token preceded by whitespace) when one is in the window's last quarter.
Every chunk is a (start, end) character range into the original text; its text is `text[start:end]`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from worker.settings import ChunkingSettings

_WORD = re.compile(r"\S+")
_SENTENCE_END = tuple(".!?。！？…")


@dataclass(frozen=True)
class Span:
    start: int
    end: int


class Chunker:
    """Turns one text into character spans; one span (the whole text) when it fits in one chunk."""

    def __init__(self, settings: ChunkingSettings, tokenizer: Tokenizer) -> None:
        self.mode = settings.mode
        self.size = settings.size
        self.overlap = min(settings.overlap, settings.size - 1)
        self.max_word_chars = settings.max_word_chars
        # The model's tokenizer itself where it neither truncates nor pads (the encoder's reference never does): a
        # copy is the size of the loaded tokenizer again (Gemma 3's: ~110 MB, ~450 MB while it is parsed) in every
        # process, where the children of `run --processes` share the supervisor's one copy-on-write.
        tok = tokenizer
        if tok.truncation is not None or tok.padding is not None:
            tok = Tokenizer.from_str(tokenizer.to_str())
            tok.no_truncation()
            tok.no_padding()
        self.tokenizer = tok
        # words mode falls back to token windows of about the same length (~1.3 tokens per word)
        self.fallback_tokens = max(1, self.size * 4 // 3) if self.mode == "words" else self.size

    def split(self, text: str) -> list[Span]:
        if self.mode == "tokens":
            return self._token_windows(text, 0, len(text), self.size, self.overlap) or [Span(0, len(text))]
        return self._word_windows(text) or [Span(0, len(text))]

    def split_many(self, texts: Sequence[str]) -> list[list[Span]]:
        return [self.split(t) for t in texts]

    # ---- words ----

    def _word_windows(self, text: str) -> list[Span]:
        words: list[Span] = []
        weights: list[float] = []  # a word counts 1; a token window of a long run counts its tokens * 3/4
        for m in _WORD.finditer(text):
            if m.end() - m.start() > self.max_word_chars:
                # no spaces to cut at: token windows over this run, each worth its length in words
                for span, n_tokens in self._token_windows(text, m.start(), m.end(), self.fallback_tokens, 0,
                                                          with_counts=True):
                    words.append(span)
                    weights.append(n_tokens * 3 / 4)
            else:
                words.append(Span(m.start(), m.end()))
                weights.append(1.0)
        if not words:
            return []
        if sum(weights) <= self.size:
            return [Span(words[0].start, words[-1].end)]
        spans: list[Span] = []
        i = 0
        while i < len(words):
            end, total = i, 0.0
            while end < len(words) and (end == i or total + weights[end] <= self.size):
                total += weights[end]
                end += 1
            if end < len(words):
                end = self._sentence_cut(text, words, i, end)
            spans.append(Span(words[i].start, words[end - 1].end))
            if end >= len(words):
                break
            back, shared = end, 0.0
            while back - 1 > i and shared + weights[back - 1] <= self.overlap:
                back -= 1
                shared += weights[back]
            i = back
        return spans

    def _sentence_cut(self, text: str, words: list[Span], begin: int, end: int) -> int:
        """Move `end` back to just after a sentence end in the window's last quarter, if there is one."""
        floor = begin + max(1, (end - begin) * 3 // 4)
        for j in range(end, floor, -1):
            w = words[j - 1]
            if text[w.start:w.end].endswith(_SENTENCE_END):
                return j
        return end

    # ---- tokens ----

    def _token_windows(self, text: str, start: int, end: int, size: int, overlap: int,
                       with_counts: bool = False) -> list[Any]:
        """Spans of at most `size` tokens (with their token counts when `with_counts`)."""
        piece = text[start:end]
        offsets = [(a + start, b + start) for a, b in
                   self.tokenizer.encode(piece, add_special_tokens=False).offsets if b > a]
        if not offsets:
            return []
        if len(offsets) <= size:
            one = _strip(text, offsets[0][0], offsets[-1][1])
            if one.start == one.end:  # whitespace tokens only
                return []
            return [(one, len(offsets))] if with_counts else [one]
        spans: list[Any] = []
        i = 0
        while i < len(offsets):
            cut = min(i + size, len(offsets))
            if cut < len(offsets):
                cut = self._word_start_cut(text, offsets, i, cut)
            span = _strip(text, offsets[i][0], offsets[cut - 1][1])
            if span.start < span.end:  # a window of whitespace tokens only (a text's trailing newlines) is no chunk
                spans.append((span, cut - i) if with_counts else span)
            if cut >= len(offsets):
                break
            i = max(cut - overlap, i + 1)
        return spans

    @staticmethod
    def _word_start_cut(text: str, offsets: list[tuple[int, int]], begin: int, cut: int) -> int:
        """Cut before a token that starts a word (follows whitespace) in the window's last quarter."""
        floor = begin + max(1, (cut - begin) * 3 // 4)
        for j in range(cut, floor, -1):
            s = offsets[j][0]
            starts_word = text[s].isspace() or (s > 0 and text[s - 1].isspace()) or offsets[j - 1][1] < s
            if starts_word:
                return j
        return cut


def _strip(text: str, start: int, end: int) -> Span:
    """A span without leading/trailing whitespace (Metaspace/ByteLevel tokens may carry the space)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return Span(start, end)


def document_vector(chunk_vectors: np.ndarray, token_counts: np.ndarray, normalize: bool) -> np.ndarray:
    """The document's vector: its chunk vectors averaged with token-count weights, normalized as the model
    says (float32 [dim])."""
    w = token_counts.astype(np.float32)
    total = float(w.sum())
    doc = (chunk_vectors * w[:, None]).sum(axis=0) / (total if total > 0 else 1.0)
    if normalize:
        doc /= np.linalg.norm(doc) + 1e-32
    return doc.astype(np.float32)
