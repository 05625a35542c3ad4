"""Synthetic benchmark texts: sentences drawn word by word from the Zipf-ranked `vocabulary`, so a text set has
a long tail of rare words instead of repeated sentences.

Three sets with a seed each, every set of distinct texts: `short_texts` (5-15 words, search-query/tweet-sized),
`paragraph_texts` (~100 words) and `chunk_texts` (~300 words, a RAG chunk); `training_corpus` is what the
synthetic models' tokenizers are trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from worker.bench.synthetic.vocabulary import distinct, lexicons

# Share of texts per language; "mixed" draws each word from Latin or German with a few CJK words.
TEXT_LANGS = {"latin": 0.42, "german": 0.28, "cjk": 0.22, "mixed": 0.08}
SYMBOL_RATE = 0.025  # chance that a word is replaced by an emoji, number or symbol
_COMMAS = {"latin": ",", "german": ",", "mixed": ",", "cjk": "、"}
_ENDS = {"latin": (".", ".", ".", "!", "?", "…"), "german": (".", ".", ".", "!", "?", ":"),
         "mixed": (".", "!", "?", " 🙂", ""), "cjk": ("。", "。", "。", "！", "？")}


class TextGenerator:
    """Draws sentences word by word: language per text, Zipf ranks per word, punctuation and symbols."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.lex = lexicons()
        self.langs = list(TEXT_LANGS)
        self.lang_p = np.array(list(TEXT_LANGS.values()))
        self.lang_p = self.lang_p / self.lang_p.sum()

    def language(self) -> str:
        return self.langs[int(self.rng.choice(len(self.langs), p=self.lang_p))]

    def _words(self, lang: str, k: int) -> list[str]:
        rng = self.rng
        if lang == "mixed":
            src = rng.choice(3, size=k, p=(0.5, 0.4, 0.1))
            drawn = {s: iter(self.lex[name].draw(rng, int((src == s).sum())))
                     for s, name in enumerate(("latin", "german", "cjk"))}
            words = [next(drawn[int(s)]) for s in src]
        else:
            words = self.lex[lang].draw(rng, k)
        swap = np.flatnonzero(rng.random(k) < SYMBOL_RATE)
        if swap.size:
            for i, w in zip(swap.tolist(), self.lex["symbol"].draw(rng, swap.size), strict=True):
                words[i] = w
        return words

    def sentence(self, lang: str, k: int, *, end: bool = True) -> str:
        rng = self.rng
        words = self._words(lang, k)
        if lang != "cjk" and words and rng.random() < 0.85:
            words[0] = words[0][:1].upper() + words[0][1:]
        comma = _COMMAS[lang]
        for i in np.flatnonzero(rng.random(max(k - 1, 0)) < 0.07).tolist():
            words[i] += comma
        text = ("" if lang == "cjk" else " ").join(words)
        if end:
            ends = _ENDS[lang]
            text += ends[int(rng.integers(0, len(ends)))]
        return text

    def short(self) -> str:
        lang = self.language()
        return self.sentence(lang, int(self.rng.integers(5, 16)), end=self.rng.random() < 0.6)

    def passage(self, mean_words: int, spread: float) -> str:
        rng = self.rng
        lang = self.language()
        target = max(20, int(rng.normal(mean_words, spread)))
        parts: list[str] = []
        n = 0
        while n < target:
            k = min(int(rng.integers(6, 26)), max(target - n, 3))
            parts.append(self.sentence(lang, k))
            n += k
            if mean_words > 150 and rng.random() < 0.06:  # paragraph breaks inside long chunks
                parts[-1] += "\n\n"
        sep = "" if lang == "cjk" else " "
        return sep.join(parts).replace("\n\n ", "\n\n")


def short_texts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct texts of 5-15 words (queries, titles, chat messages)."""
    gen = TextGenerator(seed * 3 + 1)
    return distinct(n, gen.short)


def paragraph_texts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct paragraphs of about 100 words."""
    gen = TextGenerator(seed * 3 + 2)
    return distinct(n, lambda: gen.passage(100, 15))


def chunk_texts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct chunks of about 300 words (a retrieval chunk)."""
    gen = TextGenerator(seed * 3 + 3)
    return distinct(n, lambda: gen.passage(300, 30))


TEXT_SETS: dict[str, Callable[[int, int], list[str]]] = {
    "short": short_texts,
    "paragraph": paragraph_texts,
    "chunk": chunk_texts,
}


def training_corpus(mbytes: float = 4.0, seed: int = 1_000_003) -> list[str]:
    """About `mbytes` MB of UTF-8 text (paragraphs plus short texts) for training tokenizers."""
    gen = TextGenerator(seed)
    out: list[str] = []
    size = 0
    limit = int(mbytes * 1_000_000)
    while size < limit:
        text = gen.passage(100, 40) if gen.rng.random() < 0.7 else gen.short()
        out.append(text)
        size += len(text.encode("utf-8"))
    return out
