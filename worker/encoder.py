"""Texts -> vectors: tokenize the whole micro-batch in one call, then mean-pool token rows in C.

Contract: `Encoder.encode(texts)` equals `model2vec.StaticModel.encode(texts)` on the same folder
(float32 tables: max abs difference <= 1e-6), including its character pre-truncation, token truncation
to `max_length`, unknown-token removal, token `weights`/`mapping`, and `normalize`. Output is always
float32 [n, dim]; a text with no tokens is a zero vector.

Pooling (`worker.pooling`) adds each text's token rows (times their weights) in one compiled pass over the ids,
or, until that kernel is compiled or where numba is missing, in scipy's CSR product with bit-identical results;
one division by the counts makes the mean.

The fast path (`worker.fastpath`) skips most tokenization: it tokenizes every distinct space-separated piece
of text once and caches its token ids; the ids of a batch are then gathered from the cache and pooled by `pool`
exactly like the tokenizer's, so the vectors are bit-identical. It is turned on at construction only where it
reproduces this exact path, token for token, on a self-check corpus (`fast_path="auto"`); `"on"` forces it on
(unless the tokenizer has a component it does not implement; the check still runs and a failure is logged),
`"off"` leaves it off. `fast_path_status` says which and why; `fast_path_stats()` counts the cache's work.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from tokenizers import Tokenizer

from worker.fastpath import FastPath, FastPathUnsupported, Verification, analyze, check_corpus, light_spec, verify
from worker.model import Model
from worker.pooling import Pooler
from worker.prepared import Key, Verdict
from worker.tokenizers_fast import Backend, TokenizersBackend, cut_ids, reuse, select

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 512
FastPathMode = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class Encoded:
    """One batch's vectors [n, dim] float32 and the tokens pooled for each text (after truncation)."""

    vectors: np.ndarray
    token_counts: np.ndarray


def tokenizer_spec(model: Model) -> dict[str, Any]:
    """tokenizer.json without vocabulary and merges, as read at load (one JSON round trip where it was not)."""
    if model.tokenizer_spec:
        return model.tokenizer_spec
    spec = json.loads(model.tokenizer.to_str())
    return light_spec(spec)


def unknown_token_id(tokenizer: Tokenizer, spec: dict[str, Any]) -> int | None:
    """The id model2vec drops from every encoding (WordPiece/BPE/WordLevel unk_token, Unigram unk_id)."""
    model = tokenizer.model
    if hasattr(model, "unk_token"):
        token = model.unk_token
        return None if token is None else tokenizer.token_to_id(token)
    unk = (spec.get("model") or {}).get("unk_id")
    return None if unk is None else int(unk)


def median_token_length(tokenizer: Tokenizer | None, spec: dict[str, Any]) -> int:
    """The median length of the vocabulary's tokens (added tokens included), as model2vec computes it."""
    known = spec.get("median_token_length")
    if isinstance(known, int) or tokenizer is None:
        return int(known or 1)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    return int(np.median([len(t) for t in vocab])) if vocab else 1


class Encoder:
    """Vectorized lookup-and-average encoder over a loaded `Model`."""

    def __init__(
        self,
        model: Model,
        *,
        max_length: int | None = -1,
        normalize: bool | None = None,
        fast_path: FastPathMode = "auto",
        fast_path_cache_mb: float = 256,
        fast_path_check_texts: Sequence[str] | None = None,
        tokenizer: str = "auto",
        pooling: str = "auto",
        verdict: Verdict | None = None,
    ) -> None:
        self.model = model
        cfg_max = model.config.get("max_length", DEFAULT_MAX_LENGTH)
        self.max_length: int | None = cfg_max if max_length == -1 else max_length
        self.normalize = bool(model.config.get("normalize", False)) if normalize is None else normalize
        self.dim = model.dim

        # One tokenizer, the model's own, never copied (a 262k-token tokenizer takes seconds to copy): no
        # truncation or padding; the ids are cut to max_length here, the same way for every backend. With a
        # stored verdict (worker.prepared) it is not even loaded: what the encoder needs of it comes from there.
        spec = tokenizer_spec(model)
        self.spec = spec
        self.verdict = verdict
        if verdict is None:
            tok = model.tokenizer
            tok.no_truncation()
            tok.no_padding()
            self.unk_id = unknown_token_id(tok, spec)
            self.median_token_length = median_token_length(tok, spec)
        else:
            self.unk_id = verdict.unk_id
            self.median_token_length = median_token_length(None, spec)

        # model2vec cuts each text to max_length * median token length characters before tokenizing.
        self.char_limit = None if self.max_length is None else self.max_length * self.median_token_length
        self._extra_check_texts = list(fast_path_check_texts or [])
        self._check: list[str] | None = None
        tok_file = model.tokenizer_file if model.tokenizer_file.is_file() else None
        if verdict is None:
            self.tokenizer_selection = select(model.tokenizer, tok_file, tokenizer, self._cut(self._check_texts))
        else:
            self.tokenizer_selection = reuse(verdict.library, verdict.reason, tok_file, lambda: model.tokenizer)
        self.backend: Backend = self.tokenizer_selection.backend
        log.info("tokenizer library", extra={"model": model.name, "library": self.backend.name,
                                     "reason": self.tokenizer_selection.reason,
                                     "seconds": round(self.tokenizer_selection.seconds, 3)})

        weights = None if model.weights is None else np.asarray(model.weights, dtype=np.float32)
        self.pooler = Pooler(model.table, weights, model.mapping, pooling)
        if pooling == "compiled":
            self.pooler.compile_now()

        self._fast: FastPath | None = None
        self.fast_path_verification: Verification | None = None
        self._fast_status = "off: disabled by setting"
        if fast_path not in ("auto", "on", "off"):
            raise ValueError(f"fast_path must be auto, on or off, not {fast_path!r}")
        if fast_path == "auto" and not isinstance(self.backend, TokenizersBackend):
            # Measured (docs/benchmarks.md): a faster library tokenizes a batch in less time than the piece cache
            # takes to split and look it up, so the cache only pays in front of the reference tokenizer.
            self._fast_status = f"off: {self.backend.name} tokenizes faster than the piece cache"
        elif fast_path != "off":
            self._setup_fast_path(fast_path, fast_path_cache_mb, fast_path_check_texts)

    # --- fast path -----------------------------------------------------------------------------------

    def _setup_fast_path(self, mode: FastPathMode, cache_mb: float, extra: Sequence[str] | None) -> None:
        try:
            scheme = analyze(self.spec)
            # A faster library fills one text per piece; the reference joins pieces where that is safe (fewer calls).
            fast = FastPath(tokenizer=self.tokenizer, scheme=scheme, unk_id=self.unk_id, max_length=self.max_length,
                            cache_bytes=int(cache_mb * 1024 * 1024), spec=self.spec, fill=self.backend.encode_flat,
                            join_pieces=isinstance(self.backend, TokenizersBackend))
            texts = self._check_texts
            result = verify(fast, texts, exact_encode=self._encode_exact,
                            fast_encode=lambda t: self._encode_with(fast, t), cut=self._cut)
        except FastPathUnsupported as e:
            self._fast_status = f"off: {e}"
            log.info("fast path off", extra={"model": self.model.name, "reason": str(e)})
            return
        except Exception as e:  # a tokenizer the analysis misread must not stop the worker: exact path
            self._fast_status = f"off: self-check raised {type(e).__name__}: {e}"
            log.warning("fast path off: self-check raised", exc_info=True,
                        extra={"model": self.model.name, "reason": self._fast_status[5:]})
            return
        self.fast_path_verification = result
        info = {"model": self.model.name, "scheme": scheme.description, "check_texts": result.texts,
                "check_fast_texts": result.fast_texts, "check_max_abs_diff": result.max_abs_diff,
                "check_seconds": round(result.seconds, 3), "cache_mb": cache_mb, "mode": mode}
        if result.ok:
            self._fast = fast
            self._fast_status = "on"
            log.info("fast path on", extra=info)
        elif mode == "on":
            self._fast = fast
            self._fast_status = "on"
            log.warning("fast path forced on although its self-check failed", extra=info | {"reason": result.reason})
        else:
            self._fast_status = f"off: {result.reason}"
            log.warning("fast path off: self-check failed", extra=info | {"reason": result.reason})

    @property
    def _check_texts(self) -> list[str]:
        """The self-check corpus (built-in + the user's), built on first use: it reads the reference's vocabulary."""
        if self._check is None:
            self._check = check_corpus(self.tokenizer) + self._extra_check_texts
        return self._check

    def found(self, key: Key) -> Verdict:
        """What this encoder's load-time check found, as a verdict to store under `key`."""
        return Verdict(key=key, library=self.backend.name, reason=self.tokenizer_selection.reason,
                       vocab_size=self.model.vocab_size, unk_id=self.unk_id, spec=self.spec)

    @property
    def tokenizer(self) -> Tokenizer:
        """The reference tokenizer (`tokenizers`), reloaded if it was released."""
        return self.model.tokenizer

    def release_reference(self) -> bool:
        """Free the reference tokenizer's memory where nothing of this encoder uses it any more: a faster library
        runs and the fast path is off. Returns whether it was released."""
        if isinstance(self.backend, TokenizersBackend) or self._fast is not None:
            return False
        self.model.tokenizer_ref.release()
        return True

    @property
    def tokenizer_description(self) -> str:
        """The tokenizer library that runs, and why: "gigatoken: same ids as tokenizers on 595 self-check texts"."""
        return f"{self.backend.name}: {self.tokenizer_selection.reason}"

    @property
    def fast_path_status(self) -> str:
        """"on", or "off: <reason>"."""
        return self._fast_status

    def fast_path_stats(self) -> tuple[int, int, int, int]:
        """Cumulative (hits, misses, entries, bytes) of the piece cache: piece lookups served from the cache,
        pieces tokenized, keys held and estimated bytes held; zeros while the fast path is off."""
        return (0, 0, 0, 0) if self._fast is None else self._fast.stats()

    def _cut(self, texts: Sequence[str]) -> list[str]:
        """model2vec's character pre-cut."""
        limit = self.char_limit
        if limit is not None and max(map(len, texts), default=0) > limit:
            return [t[:limit] for t in texts]
        return list(texts)

    def _tokenize_fast(self, fast: FastPath, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The fast path's ids, and the texts it leaves to the exact path (None: none)."""
        texts = self._cut(texts)
        flat, counts, exact = fast.tokenize(texts)
        if not exact.any():
            return flat, counts, None
        return flat, counts, exact

    def _pool_fast(self, fast: FastPath, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        flat, counts, exact = self._tokenize_fast(fast, texts)
        out = self.pool(flat, counts)
        if exact is not None:
            where = np.flatnonzero(exact)
            sub_flat, sub_counts = self.tokenize([texts[i] for i in where.tolist()])
            out[where] = self.pool(sub_flat, sub_counts)
            counts[where] = sub_counts
        return out, counts

    def _finish(self, out: np.ndarray) -> np.ndarray:
        if self.normalize:
            norm = np.linalg.norm(out, axis=1, keepdims=True)
            norm += 1e-32
            out /= norm
        return out

    def _encode_with(self, fast: FastPath, texts: Sequence[str]) -> np.ndarray:
        return self._finish(self._pool_fast(fast, texts)[0])

    def _encode_exact(self, texts: Sequence[str]) -> np.ndarray:
        flat, counts = self.tokenize(texts)
        return self._finish(self.pool(flat, counts))

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of the batch, flat (int64), and the count per text: model2vec's character pre-cut, the
        first max_length tokens, unknown tokens removed."""
        flat, counts = self.backend.encode_flat(self._cut(texts))
        return cut_ids(flat, counts, self.max_length, self.unk_id)

    def pool(self, flat: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Mean (weighted if the model has weights) of each text's token rows; float32 [n, dim]: the compiled
        kernel once `pooler.compile_later()` (the worker, after start-up) or `compile_now()` has made it ready,
        the sparse product, with bit-identical results, until then (and with `pooling="sparse"`)."""
        return self.pooler.means(flat, counts)

    def encode_batch(self, texts: Sequence[str]) -> Encoded:
        """Encode a micro-batch; also returns the pooled token count of each text (for metrics)."""
        if self._fast is not None:
            try:
                out, counts = self._pool_fast(self._fast, texts)
            except Exception as e:
                exact = self.encode_exact(texts)  # raises too if the input is the problem: the fast path stays
                self._fast = None
                self._fast_status = f"off: raised {type(e).__name__}: {e}"
                log.error("fast path off: it raised where the exact path did not", exc_info=True,
                          extra={"model": self.model.name, "reason": self._fast_status[5:]})
                return exact
        else:
            flat, counts = self.tokenize(texts)
            out = self.pool(flat, counts)
        return Encoded(self._finish(out), counts)

    def encode_exact(self, texts: Sequence[str]) -> Encoded:
        """The exact path whatever the fast-path setting (for checks and benchmarks)."""
        flat, counts = self.tokenize(texts)
        return Encoded(self._finish(self.pool(flat, counts)), counts)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim]; equals model2vec.StaticModel.encode on the same model folder."""
        return self.encode_batch(texts).vectors
