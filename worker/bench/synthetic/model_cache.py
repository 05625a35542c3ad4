"""The cache of built synthetic models: a folder per parameter set under
${XDG_CACHE_HOME:-~/.cache}/embedstream/bench-models/<key>, so that reruns start at once (a build trains a
tokenizer: ~13 s for the default Unigram model).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.bench.synthetic.models import build_model
from worker.bench.synthetic.texts import training_corpus

# Bump when the text generator (vocabulary, texts) or the model layout (models) changes: it is part of every
# cache key, so a cached folder is never one built from other texts or in another layout.
GENERATOR_VERSION = 1


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
