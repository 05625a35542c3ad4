"""The fixed vocabulary the synthetic texts are drawn from: about 50,000 distinct pseudo-words in four
"languages", each word ranked, and a Zipf law (s = 1.1) over the ranks.

Latin-script words with accents, German-like words and compounds (ä ö ü ß), CJK/kana words written without
spaces, and a small set of emoji, numbers and symbols, built from syllables. Within a language shorter words get
the better ranks (as in real languages), so drawn texts have a long tail of rare words. The vocabulary is the same
for every seed (`VOCAB_SEED`); it is apart from `texts` because it is built once and shared by every text set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

ZIPF_S = 1.1
VOCAB_SEED = 20_240_601
# Distinct words per language; about 50,000 in all.
LANG_SIZES = {"latin": 21_000, "german": 16_000, "cjk": 12_500, "symbol": 500}

# Syllable inventories.
_LATIN_ONSETS = ("", "", "b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "ch", "br", "cr",
                 "tr", "pl", "qu", "gn", "ll", "ñ", "j", "z", "h", "gu", "fr", "pr")
_LATIN_VOWELS = ("a", "a", "e", "e", "i", "o", "o", "u", "é", "è", "à", "ô", "í", "ó", "ú", "ê", "ü", "ã", "ia",
                 "io", "ue", "ai", "ou")
_LATIN_CODAS = ("", "", "", "", "n", "r", "s", "l", "x", "t", "z", "m", "ç", "nt", "st")
_DE_ONSETS = ("", "b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "w", "z", "sch", "st", "sp",
              "pf", "kr", "gr", "br", "fl", "str", "schw", "kn", "zw", "tr", "v")
_DE_VOWELS = ("a", "e", "e", "i", "o", "u", "ä", "ö", "ü", "ei", "au", "eu", "ie", "aa", "ee")
_DE_CODAS = ("", "", "n", "r", "l", "ch", "ck", "ng", "t", "s", "ß", "tz", "rn", "nd", "ft", "lt", "m", "cht")
_DE_SUFFIXES = ("", "", "", "en", "er", "ung", "heit", "keit", "lich", "isch", "chen", "schaft", "e", "es", "st")
_DE_FUNCTION = ("der", "die", "das", "und", "ist", "nicht", "mit", "von", "zu", "auf", "für", "den", "im", "ein",
                "eine", "sich", "auch", "über", "aus", "wird")
_LATIN_FUNCTION = ("de", "la", "le", "el", "et", "y", "en", "que", "les", "los", "un", "une", "est", "por", "à",
                   "du", "des", "con", "pour", "no", "se", "il", "más", "très", "où")
_PARTICLES = ("は", "の", "が", "を", "に", "で", "と", "も", "へ", "から", "まで", "です", "ます", "した", "して",
              "ない", "こと", "よう", "これ", "それ")
_EMOJI = ("🙂", "😂", "🚀", "👍", "👍🏽", "👋🏿", "🇫🇷", "🇯🇵", "🇩🇪", "❤️", "🤖", "🔥", "✨", "🎉", "😅", "🙏", "💡",
          "📈", "✅", "❌", "⚠️", "👨‍👩‍👧", "🧑‍💻", "☕", "🌍", "🍣", "⚽", "🎶", "🤔", "😍")
_SYMBOLS = ("€", "$", "%", "&", "#", "@", "+", "=", "→", "±", "°C", "km/h", "m²", "№", "§", "…", "•", "×")


@dataclass(frozen=True)
class Lexicon:
    """One language's words by rank (0 = most frequent) and the cumulative Zipf probabilities of the ranks."""

    words: tuple[str, ...]
    cdf: np.ndarray

    def draw(self, rng: np.random.Generator, k: int) -> list[str]:
        idx = np.searchsorted(self.cdf, rng.random(k), side="right")
        words = self.words
        return [words[i] for i in idx.tolist()]


def zipf_cdf(n: int, s: float = ZIPF_S) -> np.ndarray:
    """Cumulative probabilities of ranks 1..n under p(k) ∝ k^-s (last entry exactly 1)."""
    p = np.arange(1, n + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(p / p.sum())
    cdf[-1] = 1.0
    return cdf


def _ranked(rng: np.random.Generator, words: Iterable[str], n: int, first: Sequence[str] = ()) -> tuple[str, ...]:
    """`first` at the top ranks, then distinct words ordered by length with noise (short words are frequent)."""
    seen = set(first)
    pool = [w for w in dict.fromkeys(words) if w not in seen]
    keys = np.array([len(w) for w in pool], dtype=np.float64) + rng.normal(0, 1.5, size=len(pool))
    ordered = [pool[i] for i in np.argsort(keys, kind="stable")]
    out = tuple(first) + tuple(ordered)
    if len(out) < n:
        raise RuntimeError(f"word generator produced {len(out)} distinct words, wanted {n}")
    return out[:n]


def _syllable_words(rng: np.random.Generator, n: int, onsets: Sequence[str], vowels: Sequence[str],
                    codas: Sequence[str], syllables: Sequence[int], weights: Sequence[float]) -> Iterable[str]:
    k = 0
    while k < n:
        m = int(rng.choice(syllables, p=weights))
        o = rng.integers(0, len(onsets), m)
        v = rng.integers(0, len(vowels), m)
        c = rng.integers(0, len(codas), m)
        k += 1
        yield "".join(onsets[a] + vowels[b] + codas[d] for a, b, d in zip(o, v, c, strict=True))


def distinct(n: int, make: Callable[[], str]) -> list[str]:
    """The first `n` distinct strings `make()` returns, in the order first made."""
    out: dict[str, None] = {}
    while len(out) < n:
        out[make()] = None
    return list(out)


def _latin_words(rng: np.random.Generator, n: int) -> tuple[str, ...]:
    gen = _syllable_words(rng, n * 3, _LATIN_ONSETS, _LATIN_VOWELS, _LATIN_CODAS, (1, 2, 3, 4),
                          (0.12, 0.38, 0.35, 0.15))
    return _ranked(rng, gen, n, _LATIN_FUNCTION)


def _german_words(rng: np.random.Generator, n: int) -> tuple[str, ...]:
    stems = list(dict.fromkeys(_syllable_words(rng, 6000, _DE_ONSETS, _DE_VOWELS, _DE_CODAS, (1, 2),
                                               (0.6, 0.4))))

    def gen() -> Iterator[str]:
        while True:
            parts = int(rng.choice((1, 2, 3), p=(0.55, 0.33, 0.12)))
            picks = rng.integers(0, len(stems), parts)
            word = "".join(stems[i] for i in picks) + _DE_SUFFIXES[int(rng.integers(0, len(_DE_SUFFIXES)))]
            # Nouns (most compounds) are capitalized.
            yield word.capitalize() if parts > 1 or rng.random() < 0.3 else word

    return _ranked(rng, distinct(math.ceil(n * 1.2), gen().__next__), n, _DE_FUNCTION)


def _cjk_words(rng: np.random.Generator, n: int) -> tuple[str, ...]:
    kanji = [chr(c) for c in rng.choice(np.arange(0x4E00, 0x9FA0), size=2500, replace=False)]
    kata = [chr(c) for c in range(0x30A1, 0x30FB)]
    hira = [chr(c) for c in range(0x3041, 0x3097)]

    def gen() -> Iterator[str]:
        while True:
            r = rng.random()
            if r < 0.65:  # kanji compound, mostly two characters
                m = int(rng.choice((1, 2, 3, 4), p=(0.15, 0.6, 0.18, 0.07)))
                word = "".join(kanji[i] for i in rng.integers(0, len(kanji), m))
                if rng.random() < 0.3:  # with a kana ending (verbs, adjectives)
                    word += "".join(hira[i] for i in rng.integers(0, len(hira), int(rng.integers(1, 3))))
                yield word
            elif r < 0.85:  # katakana loanword
                yield "".join(kata[i] for i in rng.integers(0, len(kata), int(rng.integers(2, 6))))
            else:
                yield "".join(hira[i] for i in rng.integers(0, len(hira), int(rng.integers(2, 5))))

    return _ranked(rng, distinct(math.ceil(n * 1.2), gen().__next__), n, _PARTICLES)


def _symbol_words(rng: np.random.Generator, n: int) -> tuple[str, ...]:
    words: dict[str, None] = dict.fromkeys(_EMOJI + _SYMBOLS)
    while len(words) < n:
        r = rng.random()
        if r < 0.3:
            w = str(int(rng.integers(0, 100)))
        elif r < 0.5:
            w = str(int(rng.integers(1900, 2040)))
        elif r < 0.65:
            w = f"{rng.uniform(0, 100):.{int(rng.integers(1, 3))}f}"
        elif r < 0.75:
            w = f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
        elif r < 0.85:
            w = f"{int(rng.integers(1, 100))}%"
        elif r < 0.93:
            w = f"#{''.join(chr(97 + int(i)) for i in rng.integers(0, 26, int(rng.integers(3, 9))))}"
        else:
            w = str(int(rng.integers(100, 10_000_000)))
        words[w] = None
    return _ranked(rng, words, n, _EMOJI[:10])


@lru_cache(maxsize=1)
def lexicons() -> dict[str, Lexicon]:
    """The fixed vocabulary (same for every seed): {language: Lexicon}, about 50,000 distinct words in all."""
    rng = np.random.default_rng(VOCAB_SEED)
    makers: dict[str, Callable[[np.random.Generator, int], tuple[str, ...]]] = {
        "latin": _latin_words, "german": _german_words, "cjk": _cjk_words, "symbol": _symbol_words}
    return {lang: Lexicon(makers[lang](rng, n), zipf_cdf(n)) for lang, n in LANG_SIZES.items()}


def vocabulary_size() -> int:
    """How many distinct words the vocabulary holds across its languages (a few are shared)."""
    return len(set().union(*(lex.words for lex in lexicons().values())))
