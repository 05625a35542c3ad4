"""Builds small Model2Vec-layout model folders offline: real trained tokenizers, random tables."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

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
    texts = corpus()
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<pad>", "<s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=["<pad>", "<unk>"], unk_token="<unk>"
        )
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        )
    else:
        raise ValueError(kind)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


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
    vocab = tok.get_vocab_size(with_added_tokens=True)
    rng = np.random.default_rng(seed)
    rows = max(8, vocab // 4) if mapping else vocab
    table = rng.normal(0, 1, size=(rows, dim)).astype(np.float32)
    if dtype == "float16":
        table = table.astype(np.float16)
    elif dtype == "int8":
        table = np.clip(np.round(table * 40), -127, 127).astype(np.int8)
    tensors = {"embeddings": np.ascontiguousarray(table)}
    if weights:
        tensors["weights"] = rng.uniform(0.1, 2.0, size=vocab).astype(np.float32)
    if mapping:
        tensors["mapping"] = rng.integers(0, rows, size=vocab).astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    tok.save(str(folder / "tokenizer.json"))
    config = {"model_type": "model2vec", "normalize": normalize, "hidden_dim": dim, "embedding_dtype": dtype}
    config.update(extra_config or {})
    (folder / "config.json").write_text(json.dumps(config))
    return folder
