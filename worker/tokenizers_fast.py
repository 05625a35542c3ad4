"""Which tokenizer library turns texts into ids: `tokenizers` (the reference), or a faster one proven identical.

`tokenizers` is what model2vec runs, so its ids are the truth. Two newer libraries read the same tokenizer.json
and are much faster on some layouts (docs/benchmarks.md): `gigatoken` (byte-level and SentencePiece BPE, e.g.
Gemma 3: ~10x less CPU per text here) and `tokie` (more layouts, ~2-3x; only when named: see `select`). Either
is used only where, at load, it gives exactly the reference's ids, token for token, on the self-check corpus;
otherwise the reference runs.
Both are optional (`pip install embedstream[fast]`); the reference stays a hard dependency.

Every backend returns a batch's ids flat (int64) with the count per text, without special tokens, padding or
truncation: the encoder truncates to `max_length` itself, so all backends are cut the same way.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

TokenizerChoice = Literal["auto", "tokenizers", "gigatoken", "tokie"]
CHOICES: tuple[str, ...] = ("auto", "tokenizers", "gigatoken", "tokie")


class Backend(Protocol):
    name: str

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 flat, count per text int64), no special tokens, no truncation."""
        ...


class TokenizersBackend:
    """The reference: Hugging Face `tokenizers` (what model2vec runs)."""

    name = "tokenizers"

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        id_lists = [e.ids for e in self._encode(list(texts), add_special_tokens=False)]
        counts = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        flat = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=int(counts.sum()))
        return flat, counts


def _parallel() -> bool | None:
    """Follow TOKENIZERS_PARALLELISM as `tokenizers` does: "false"/"0"/"off" = the calling thread only."""
    value = os.environ.get("TOKENIZERS_PARALLELISM", "").strip().lower()
    return False if value in ("false", "0", "off", "no") else None


class GigatokenBackend:
    """`gigatoken`: byte-level and SentencePiece BPE in Rust; results come back as one flat buffer."""

    name = "gigatoken"

    def __init__(self, tokenizer_file: Path) -> None:
        import gigatoken

        # the wrapper, not its backend: parallel=None lets it run on the calling thread after a fork
        self._tok: Any = gigatoken.Tokenizer(str(tokenizer_file))
        self._parallel = _parallel()

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        layout = self._tok.encode_batch(list(texts), parallel=self._parallel).layout
        offsets = np.asarray(layout.offsets, dtype=np.int64)
        ids = np.asarray(layout.content.data)[offsets[0]:offsets[-1]].astype(np.int64)
        return ids, np.diff(offsets)


class TokieBackend:
    """`tokie`: many layouts in Rust; `encode_batch_flat` hands back numpy ids and lengths."""

    name = "tokie"

    def __init__(self, tokenizer_file: Path) -> None:
        import tokie

        self._tok: Any = tokie.Tokenizer.from_json(str(tokenizer_file))
        self._tok.no_truncation()
        self._tok.no_padding()

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        ids, lengths = self._tok.encode_batch_flat(list(texts), add_special_tokens=False)
        return np.asarray(ids, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


_FAST: dict[str, Any] = {"gigatoken": GigatokenBackend, "tokie": TokieBackend}


@dataclass(frozen=True)
class Selection:
    """The backend that runs, and why (for the log and `embedstream_model_info`)."""

    backend: Backend
    reason: str
    seconds: float


def _same_ids(candidate: Backend, reference: TokenizersBackend, texts: Sequence[str]) -> str:
    """"" when `candidate` gives the reference's ids for every text, else where it first differs."""
    ref_ids, ref_counts = reference.encode_flat(texts)
    ids, counts = candidate.encode_flat(texts)
    if np.array_equal(ref_counts, counts) and np.array_equal(ref_ids, ids):
        return ""
    ends = np.cumsum(ref_counts)
    for i in range(len(texts)):
        a = ref_ids[ends[i] - ref_counts[i]:ends[i]]
        b = ids[int(counts[:i].sum()):int(counts[:i + 1].sum())] if i < counts.size else np.zeros(0)
        if not np.array_equal(a, b):
            return f"text {i} {texts[i][:40]!r}: {b[:8].tolist()} instead of {a[:8].tolist()}"
    return "token counts differ"


def select(tokenizer: Tokenizer, tokenizer_file: Path | None, choice: str, check_texts: Sequence[str]) -> Selection:
    """The fastest backend that matches the reference on `check_texts` (`auto`), or the one named (it must
    match too: a named backend that differs is refused, with the reason, and the reference runs)."""
    t0 = time.perf_counter()
    reference = TokenizersBackend(tokenizer)
    if choice not in CHOICES:
        raise ValueError(f"tokenizer must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "tokenizers":
        return Selection(reference, "set by EMBED_MODEL__TOKENIZER", time.perf_counter() - t0)
    # auto tries gigatoken only: tokie matched our corpus on a WordPiece model yet differed on a word with an
    # astral-plane character (tests/test_fastpath.py's property test found it), so it runs only when named.
    names = ["gigatoken"] if choice == "auto" else [choice]
    notes = []
    for name in names:
        if tokenizer_file is None:
            notes.append(f"{name}: no tokenizer.json file")
            continue
        try:
            candidate = _FAST[name](tokenizer_file)
        except ImportError:
            notes.append(f"{name}: not installed (pip install embedstream[fast])")
            continue
        except Exception as e:  # a layout the library does not read
            notes.append(f"{name}: cannot read this tokenizer ({type(e).__name__}: {str(e)[:120]})")
            continue
        try:
            differs = _same_ids(candidate, reference, check_texts)
        except Exception as e:
            differs = f"raised {type(e).__name__}: {str(e)[:120]}"
        if not differs:
            return Selection(candidate, f"same ids as tokenizers on {len(check_texts)} self-check texts",
                             time.perf_counter() - t0)
        notes.append(f"{name}: differs from tokenizers ({differs})")
    return Selection(reference, "; ".join(notes) or "reference", time.perf_counter() - t0)


def reuse(library: str, reason: str, tokenizer_file: Path | None, reference: Callable[[], Tokenizer]) -> Selection:
    """The backend a stored verdict (worker.prepared) names, without checking it again: the verdict is valid only
    for this very tokenizer file, these library versions and this check. `reference` loads `tokenizers`' tokenizer
    where the verdict kept the reference."""
    t0 = time.perf_counter()
    if library == "tokenizers" or tokenizer_file is None:
        backend: Backend = TokenizersBackend(reference())
    else:
        backend = _FAST[library](tokenizer_file)
    return Selection(backend, f"{reason} (stored verdict)", time.perf_counter() - t0)


def cut_ids(flat: np.ndarray, counts: np.ndarray, max_length: int | None,
            unk_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """model2vec's cut of a batch's ids: the first `max_length` tokens of each text (unknown tokens count),
    then the unknown token removed."""
    keep: np.ndarray | None = None
    if max_length is not None and counts.size and int(counts.max()) > max_length:
        starts = np.cumsum(counts) - counts
        keep = np.arange(flat.size) - np.repeat(starts, counts) < max_length
    if unk_id is not None and flat.size:
        known = flat != unk_id
        if not known.all():
            keep = known if keep is None else keep & known
    if keep is None:
        return flat, counts
    owner = np.repeat(np.arange(counts.size), counts)[keep]
    return flat[keep], np.bincount(owner, minlength=counts.size).astype(np.int64)
