"""Synthetic benchmark inputs: Zipf-distributed multilingual texts and Model2Vec-layout model folders.

Texts. A fixed vocabulary of about 50,000 distinct pseudo-words is built from syllables in four "languages":
Latin-script words with accents, German-like words and compounds (ä ö ü ß), CJK/kana words written without
spaces, and a small set of emoji, numbers and symbols. Within a language, shorter words get the better ranks
(as in real languages), and every word of a text is drawn by rank from a Zipf law with s = 1.1, so a text
set has a long tail of rare words instead of repeated sentences. Three sets with a seed each:
`short_texts` (5-15 words, search-query/tweet-sized), `paragraph_texts` (~100 words) and `chunk_texts`
(~300 words, a RAG chunk). Every set holds distinct texts.

Models. `build_model` trains a real tokenizer with the `tokenizers` library on a generated corpus (Unigram with
NFKC + Metaspace like SentencePiece/Gemma, byte-level BPE, or BERT WordPiece) and writes model.safetensors
(`embeddings` [+ `weights`, `mapping`]), tokenizer.json and config.json; `cached_model` keeps built folders
under ${XDG_CACHE_HOME:-~/.cache}/embedstream/bench-models/<key> so that reruns start at once.

Past 400 lines on purpose: the models' tokenizers are trained on these texts and one GENERATOR_VERSION keys
both in the cache, so a change to either half must be seen with the other; most of the length is word lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

# Bump when the text generator or the model layout changes: it is part of every cache key.
GENERATOR_VERSION = 1

ZIPF_S = 1.1
VOCAB_SEED = 20_240_601
# Distinct words per language; about 50,000 in all.
LANG_SIZES = {"latin": 21_000, "german": 16_000, "cjk": 12_500, "symbol": 500}
# Share of texts per language; "mixed" draws each word from Latin or German with a few CJK words.
TEXT_LANGS = {"latin": 0.42, "german": 0.28, "cjk": 0.22, "mixed": 0.08}
SYMBOL_RATE = 0.025  # chance that a word is replaced by an emoji, number or symbol

KINDS = ("unigram", "bpe", "wordpiece")
SPECIAL_TOKENS = {
    "bpe": ["<pad>", "<s>"],
    "unigram": ["<pad>", "<unk>"],
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
}

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
_COMMAS = {"latin": ",", "german": ",", "mixed": ",", "cjk": "、"}
_ENDS = {"latin": (".", ".", ".", "!", "?", "…"), "german": (".", ".", ".", "!", "?", ":"),
         "mixed": (".", "!", "?", " 🙂", ""), "cjk": ("。", "。", "。", "！", "？")}


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

    it = gen()
    words: dict[str, None] = {}
    while len(words) < n * 1.2:
        words[next(it)] = None
    return _ranked(rng, words, n, _DE_FUNCTION)


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

    it = gen()
    words: dict[str, None] = {}
    while len(words) < n * 1.2:
        words[next(it)] = None
    return _ranked(rng, words, n, _PARTICLES)


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
    return len(set().union(*(lex.words for lex in lexicons().values())))


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


def _distinct(n: int, make: Callable[[], str]) -> list[str]:
    out: dict[str, None] = {}
    while len(out) < n:
        out[make()] = None
    return list(out)


def short_texts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct texts of 5-15 words (queries, titles, chat messages)."""
    gen = TextGenerator(seed * 3 + 1)
    return _distinct(n, gen.short)


def paragraph_texts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct paragraphs of about 100 words."""
    gen = TextGenerator(seed * 3 + 2)
    return _distinct(n, lambda: gen.passage(100, 15))


def chunk_texts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct chunks of about 300 words (a retrieval chunk)."""
    gen = TextGenerator(seed * 3 + 3)
    return _distinct(n, lambda: gen.passage(300, 30))


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


# --- models ------------------------------------------------------------------------------------------------


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> Any:
    """A trained BPE (byte-level), Unigram (NFKC + Metaspace, SentencePiece-style) or WordPiece (BERT)
    tokenizer; returns a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer: Any = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS[kind], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS[kind], unk_token="<unk>", show_progress=False
        )
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS[kind], show_progress=False
        )
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r} (expected one of {', '.join(KINDS)})")
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def write_model(
    folder: str | os.PathLike[str],
    tokenizer: Any,
    *,
    dim: int,
    dtype: str = "float32",
    weights: bool = False,
    mapping: bool = False,
    normalize: bool = True,
    seed: int = 0,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write a random table for `tokenizer` in the Model2Vec layout (model.safetensors, tokenizer.json,
    config.json) into `folder`. Rows ~ N(0, 1); int8 tables are those rows * 40, rounded and clipped."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    rng = np.random.default_rng(seed)
    rows = max(8, vocab // 4) if mapping else vocab
    table = rng.normal(0, 1, size=(rows, dim)).astype(np.float32)
    if dtype == "float16":
        table = table.astype(np.float16)
    elif dtype == "int8":
        table = np.clip(np.round(table * 40), -127, 127).astype(np.int8)
    elif dtype != "float32":
        raise ValueError(f"unsupported table dtype {dtype!r} (float32, float16, int8)")
    tensors = {"embeddings": np.ascontiguousarray(table)}
    if weights:
        tensors["weights"] = rng.uniform(0.1, 2.0, size=vocab).astype(np.float32)
    if mapping:
        tensors["mapping"] = rng.integers(0, rows, size=vocab).astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    tokenizer.save(str(folder / "tokenizer.json"))
    config: dict[str, Any] = {"model_type": "model2vec", "normalize": normalize, "hidden_dim": dim,
                              "embedding_dtype": dtype}
    config.update(extra_config or {})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def build_model(
    folder: str | os.PathLike[str],
    kind: str = "unigram",
    *,
    vocab_size: int = 32_768,
    dim: int = 768,
    dtype: str = "float32",
    weights: bool = False,
    mapping: bool = False,
    normalize: bool = True,
    corpus: Iterable[str] | None = None,
    seed: int = 0,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Train a `kind` tokenizer on `corpus` (default: `training_corpus()`, ~4 MB) and write a Model2Vec folder."""
    texts = training_corpus() if corpus is None else corpus
    tok = train_tokenizer(kind, texts, vocab_size)
    return write_model(folder, tok, dim=dim, dtype=dtype, weights=weights, mapping=mapping, normalize=normalize,
                       seed=seed, extra_config=extra_config)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "embedstream" / "bench-models"


def model_key(kind: str, **options: Any) -> str:
    """A readable, stable folder name for a synthetic model's parameters (and the generator version)."""
    opts = dict(sorted(options.items()))
    digest = hashlib.sha256(json.dumps([GENERATOR_VERSION, kind, opts], sort_keys=True).encode()).hexdigest()[:10]
    short = f"{kind}-v{opts.get('vocab_size')}-d{opts.get('dim')}-{opts.get('dtype')}"
    return f"{short}-{digest}"


def cached_model(
    kind: str = "unigram",
    *,
    vocab_size: int = 32_768,
    dim: int = 768,
    dtype: str = "float32",
    weights: bool = False,
    mapping: bool = False,
    normalize: bool = True,
    corpus_mbytes: float = 4.0,
    seed: int = 0,
    root: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """A synthetic model folder, built once into the cache (atomically: built aside, then renamed)."""
    options: dict[str, Any] = dict(vocab_size=vocab_size, dim=dim, dtype=dtype, weights=weights, mapping=mapping,
                                   normalize=normalize, corpus_mbytes=corpus_mbytes, seed=seed)
    root = cache_root() if root is None else root
    folder = root / model_key(kind, **options)
    if all((folder / f).is_file() for f in ("model.safetensors", "tokenizer.json", "config.json")):
        return folder
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"building synthetic {kind} model (vocab {vocab_size}, dim {dim}, {dtype}) into {folder} ...")
    root.mkdir(parents=True, exist_ok=True)
    if folder.exists():  # left incomplete by an interrupted build
        shutil.rmtree(folder, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        build_model(tmp, kind, vocab_size=vocab_size, dim=dim, dtype=dtype, weights=weights, mapping=mapping,
                    normalize=normalize, corpus=training_corpus(corpus_mbytes), seed=seed,
                    extra_config={"model_name": f"synthetic-{folder.name}", "synthetic": options | {"kind": kind}})
        try:
            tmp.rename(folder)
        except OSError:  # built concurrently by another process: keep theirs
            if not folder.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
