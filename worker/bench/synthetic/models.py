"""Synthetic Model2Vec folders: a real tokenizer trained with the `tokenizers` library (Unigram with NFKC +
Metaspace like SentencePiece/Gemma, byte-level BPE, or BERT WordPiece) and a random table around it.

`write_model` writes model.safetensors (`embeddings` [+ `weights`, `mapping`]), tokenizer.json and config.json;
the tests build their small models with it too, so the benchmarks and the tests load the same layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from worker.bench.synthetic.texts import training_corpus

KINDS = ("unigram", "bpe", "wordpiece")
SPECIAL_TOKENS = {
    "bpe": ["<pad>", "<s>"],
    "unigram": ["<pad>", "<unk>"],
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
}


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
