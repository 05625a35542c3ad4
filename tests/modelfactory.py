"""Builds small Model2Vec-layout model folders offline: real trained tokenizers, random tables.

The tokenizer training and the folder layout live in `worker.bench.synthetic` (shared with the benchmarks);
this module keeps the tests' small fixed corpus and its 600-token vocabularies.
"""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer

from worker.bench.synthetic.models import train_tokenizer, write_model

WORDS = {
    "en": "the quick brown fox jumps over a lazy dog while streaming systems embed every event they see "
          "kafka partitions consumers batches vectors latency throughput model tokenizer average".split(),
    "fr": "le renard brun rapide saute par-dessus le chien paresseux pendant que les systèmes réagissent "
          "élève garçon façade noël où déjà très".split(),
    "de": "der schnelle braune fuchs springt über den faulen hund während straße größe mädchen übung".split(),
    "ja": ["東京", "は", "日本", "の", "首都", "です", "猫", "が", "好き", "ありがとう", "カタカナ", "漢字"],
    "emoji": ["🙂", "🚀", "👍🏽", "🇫🇷", "❤️", "🤖"],
}


def sample_texts(n: int, seed: int = 0, min_words: int = 3, max_words: int = 15) -> list[str]:
    """Mixed-language texts with a skewed word distribution, punctuation and odd whitespace."""
    rng = random.Random(seed)
    langs = list(WORDS)
    out = []
    for _ in range(n):
        lang = rng.choice(langs)
        k = rng.randint(min_words, max_words)
        words = [rng.choice(WORDS[lang] if rng.random() < 0.8 else WORDS[rng.choice(langs)]) for _ in range(k)]
        sep = "" if lang == "ja" and rng.random() < 0.7 else " "
        text = sep.join(words)
        if rng.random() < 0.3:
            text = text.capitalize() + rng.choice([".", "!", "?", " ...", ","])
        out.append(text)
    return out


def corpus() -> list[str]:
    return sample_texts(3000, seed=42) + [" ".join(ws) for ws in WORDS.values()]


def build_tokenizer(kind: str, vocab_size: int = 600) -> Tokenizer:
    """A trained BPE (byte-level), Unigram (Metaspace, SentencePiece-style) or WordPiece (BERT) tokenizer."""
    return train_tokenizer(kind, corpus(), vocab_size)


_TOKENIZER_CACHE: dict[str, str] = {}


def build_model(
    folder: Path,
    kind: str = "wordpiece",
    *,
    dim: int = 32,
    dtype: str = "float32",
    weights: bool = False,
    mapping: bool = False,
    normalize: bool = True,
    seed: int = 0,
    extra_config: dict | None = None,
) -> Path:
    """Write model.safetensors, tokenizer.json and config.json into `folder`; return it."""
    if kind not in _TOKENIZER_CACHE:
        _TOKENIZER_CACHE[kind] = build_tokenizer(kind).to_str()
    tok = Tokenizer.from_str(_TOKENIZER_CACHE[kind])
    return write_model(folder, tok, dim=dim, dtype=dtype, weights=weights, mapping=mapping, normalize=normalize,
                       seed=seed, extra_config=extra_config)
