"""The fast path: tokenize each distinct piece of text once, then encode texts from a cache of piece sums.

A static-embedding vector is the mean of a text's token rows. For the tokenizers this module accepts
(BERT-style whitespace + punctuation splitting, SentencePiece `Metaspace`, GPT-2 byte-level BPE) the tokens
of a text are the concatenation of the tokens of its *pieces*, and each piece's tokens depend on that piece
only. A piece is cut from the raw text at a space:

* **words** (the pre-tokenizer drops whitespace: BertPreTokenizer, Whitespace, WhitespaceSplit):
  `text.split(" ")`; the piece is the word.
* **spaced** (Metaspace, ByteLevel: the space belongs to the next token): the first word is its own piece,
  every other word is the piece `" " + word`. Key `"\\0" + word` stands for a first word, key `word` for
  `" " + word`. When the model treats both alike (Metaspace prepend_scheme always/first, ByteLevel
  add_prefix_space) and the word's first character does not normalize to whitespace, the first-word key
  is an alias of the other one (one tokenization, one row).

The cache maps a piece key to a slot holding the float32 sum of the piece's token rows (weights and mapping
applied, unknown tokens removed), the number of tokens kept and the number before unknown-token removal
(truncation counts those). A batch is split with one `str.split`, looked up with one `map(dict.get)`; all
new pieces of the batch are tokenized with ONE tokenizer call (`is_pretokenized=True`: every piece is
normalized, pre-tokenized and tokenized on its own, its tokens tagged with its index), summed with one sparse
(pieces x rows) product, and the texts are assembled with one sparse (texts x slots) product. The result
is the mean; the encoder normalizes.

A text takes the exact path instead when the fast path cannot prove it handles it: any character that is
not printable (all whitespace but " ", controls, format characters such as ZWJ, unassigned code points),
an added/special token's content anywhere in it, a run of spaces where the pre-tokenizer splits runs
differently (byte-level BPE), or more tokens than `max_length` (truncation).

Everything here is checked when a model loads: `verify` runs a built-in multilingual corpus (plus a user's
file) through both paths and requires identical token ids per text and vectors within tolerance; see
`worker.encoder.Encoder` for how the result turns the fast path on or off.

Cache bound and eviction: the memory estimate of an entry is its row (dim x 4 bytes) + its counters + its
key string(s) + a fixed per-entry overhead for the dict and list slots. When a batch needs room, entries
not used by the current batch are evicted oldest-first by the batch generation in which they were last
used (LRU by generation), at least half of the entries at once ("clear-half"), so eviction work is
amortized. The rows live in one preallocated array whose untouched pages are never resident.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

import numpy as np
import scipy.sparse as sp
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

FIRST = "\x00"  # key prefix of a text's first word ("spaced" schemes); never in a printable text
ENTRY_OVERHEAD = 120  # bytes per entry beyond its row and its key strings: dict entry, list slot, counters
FILL_CHUNK = 8192  # pieces per tokenizer call when filling

# Normalizers that act on each character (or on a run of characters between two starters) only, so that
# normalizing "a b" equals normalizing "a", " " and "b" apart: a space is never changed and never composes.
_LOCAL_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents", "BertNormalizer", "Nmt"}
# Of those, the ones that never turn a printable character into (or next to) whitespace; byte-level BPE
# splits whitespace runs with a look-ahead, so it accepts only these.
_NO_SPACE_NORMALIZERS = {"NFC", "NFD", "Lowercase", "StripAccents"}
# Pre-tokenizers that split on whitespace and drop it; after one of them these only split further.
_WORD_SPLITTERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
_AFTER_WORDS = _WORD_SPLITTERS | {"Punctuation", "Digits", "UnicodeScripts"}


class FastPathUnsupported(Exception):
    """The tokenizer has a component whose piece-by-piece behaviour the fast path does not implement."""


@dataclass(frozen=True)
class Scheme:
    """How a raw text is cut into pieces for one tokenizer."""

    spaced: bool  # pieces keep their leading space (Metaspace, ByteLevel); else spaces are dropped (words)
    space_runs: bool  # every space is a piece boundary, also inside runs of spaces
    first_alias: bool  # a first word tokenizes like " " + word unless its first character normalizes to space
    replacement: str  # Metaspace's replacement character (a first word must not start with it to be aliased)
    description: str
    ascii_lower: bool = False  # the normalizer lowercases everything: keys are lowercased (ASCII letters only)


def _normalizer_types(node: dict[str, Any] | None) -> list[dict[str, Any]]:
    if node is None:
        return []
    if node.get("type") == "Sequence":
        return list(chain.from_iterable(_normalizer_types(n) for n in node.get("normalizers", [])))
    return [node]


def _check_normalizer(node: dict[str, Any] | None, allowed: set[str]) -> None:
    for n in _normalizer_types(node):
        kind = n.get("type")
        if kind == "Replace":
            pattern = n.get("pattern", {})
            content = str(n.get("content", ""))
            text = pattern.get("String") if isinstance(pattern, dict) else None
            if text is None:
                raise FastPathUnsupported("normalizer Replace with a regex pattern")
            if not text or any(c.isspace() for c in text + content) or FIRST in text + content:
                raise FastPathUnsupported(f"normalizer Replace({text!r} -> {content!r}) touches whitespace")
            continue
        if kind not in allowed:
            raise FastPathUnsupported(f"normalizer {kind} is not implemented by the fast path")


def _lowercases(node: dict[str, Any] | None) -> bool:
    """The normalizer lowercases every character and nothing in it is case-sensitive (no Replace)."""
    steps = _normalizer_types(node)
    if any(n.get("type") == "Replace" for n in steps):
        return False
    return any(n.get("type") == "Lowercase" or (n.get("type") == "BertNormalizer" and n.get("lowercase", True))
               for n in steps)


def analyze(tokenizer: Tokenizer) -> Scheme:
    """The piece scheme of `tokenizer`, or FastPathUnsupported naming the component it cannot handle."""
    scheme = _analyze(tokenizer)
    normalizer = json.loads(tokenizer.to_str()).get("normalizer")
    return replace(scheme, ascii_lower=_lowercases(normalizer))


def _analyze(tokenizer: Tokenizer) -> Scheme:
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model") or {}
    kind = model.get("type")
    if kind not in ("WordPiece", "Unigram", "BPE", "WordLevel"):
        raise FastPathUnsupported(f"model type {kind} is not implemented by the fast path")
    if kind == "BPE" and model.get("dropout") not in (None, 0, 0.0):
        raise FastPathUnsupported("BPE dropout makes tokenization random")
    for added in spec.get("added_tokens") or []:
        if added.get("normalized") and str(added.get("content", "")).isprintable():
            raise FastPathUnsupported(f"added token {added.get('content')!r} is matched after normalization")
    normalizer = spec.get("normalizer")
    pre = spec.get("pre_tokenizer")
    if pre is None:
        raise FastPathUnsupported("no pre-tokenizer: a whole text is one piece")
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not steps:
        raise FastPathUnsupported("empty pre-tokenizer sequence")
    first, rest = steps[0], steps[1:]
    t0 = first.get("type")
    if t0 in _WORD_SPLITTERS:
        for step in rest:
            t = step.get("type")
            if t == "Metaspace" and step.get("prepend_scheme", "always") in ("always", "never"):
                continue  # on whitespace-free words; "first" would depend on the word's position
            if t not in _AFTER_WORDS:
                raise FastPathUnsupported(f"pre-tokenizer {t} after {t0} is not implemented by the fast path")
        _check_normalizer(normalizer, _LOCAL_NORMALIZERS)
        return Scheme(spaced=False, space_runs=True, first_alias=False, replacement=" ",
                      description=f"words: {'+'.join(s.get('type', '?') for s in steps)}")
    if rest:
        raise FastPathUnsupported(f"pre-tokenizer sequence starting with {t0} is not implemented by the fast path")
    if t0 == "Metaspace":
        if not first.get("split", True):
            raise FastPathUnsupported("Metaspace with split=false: a whole text is one piece")
        _check_normalizer(normalizer, _LOCAL_NORMALIZERS)
        scheme = first.get("prepend_scheme", "always" if first.get("add_prefix_space", True) else "never")
        return Scheme(spaced=True, space_runs=True, first_alias=scheme in ("always", "first"),
                      replacement=str(first.get("replacement", "\u2581")),
                      description=f"spaced: Metaspace prepend_scheme={scheme}")
    if t0 == "ByteLevel":
        if not first.get("use_regex", True):
            raise FastPathUnsupported("ByteLevel with use_regex=false: a whole text is one piece")
        _check_normalizer(normalizer, _NO_SPACE_NORMALIZERS)
        prefix = bool(first.get("add_prefix_space", False))
        return Scheme(spaced=True, space_runs=False, first_alias=prefix, replacement=" ",
                      description=f"spaced: ByteLevel add_prefix_space={prefix}")
    raise FastPathUnsupported(f"pre-tokenizer {t0} is not implemented by the fast path")


def added_contents(tokenizer: Tokenizer) -> tuple[str, ...]:
    """The printable contents of added tokens: a text containing one takes the exact path."""
    decoder = tokenizer.get_added_tokens_decoder()
    return tuple(sorted({t.content for t in decoder.values() if t.content and t.content.isprintable()}))


def _take(seq: Sequence[str], positions: list[int]) -> list[str]:
    if not positions:
        return []
    if len(positions) == 1:
        return [seq[positions[0]]]
    return list(itemgetter(*positions)(seq))


class FastPath:
    """Piece cache and batch encoder (means, not normalized) for one model; see the module docstring."""

    def __init__(
        self,
        *,
        tokenizer: Tokenizer,
        scheme: Scheme,
        table: np.ndarray,
        weights: np.ndarray | None,
        mapping: np.ndarray | None,
        unk_id: int | None,
        max_length: int | None,
        cache_bytes: int,
    ) -> None:
        tok = Tokenizer.from_str(tokenizer.to_str())
        tok.no_truncation()
        tok.no_padding()
        self.tokenizer = tok
        self.scheme = scheme
        self.table = table
        self.dim = int(table.shape[1])
        self.weights = weights
        self.mapping = mapping
        self.unk_id = unk_id
        self.max_length = max_length
        self.contents = added_contents(tok)
        self._direct = table.dtype == np.float32
        self._normalizer = tok.normalizer
        self.row_bytes = 4 * self.dim
        self.cache_bytes = int(cache_bytes)
        self.capacity = max(1, self.cache_bytes // (self.row_bytes + ENTRY_OVERHEAD + 56))
        self._first_ok: dict[str, bool] = {}
        self.record: dict[int, list[int]] | None = None  # slot -> raw token ids, while verifying
        self.clear()

    # --- cache state ---------------------------------------------------------------------------------

    def clear(self) -> None:
        """Drop every entry and zero the counters."""
        self._index: dict[str, int] = {}
        self._keys = np.empty(self.capacity, dtype=object)  # slot -> key, or list of keys when aliased
        # Rows are allocated once at capacity (calloc): pages never written are never resident.
        self._sums = np.zeros((self.capacity, self.dim), dtype=np.float32)
        self._raw = np.zeros(self.capacity, dtype=np.int64)
        self._kept = np.zeros(self.capacity, dtype=np.int64)
        self._used = np.full(self.capacity, -1, dtype=np.int64)  # generation of last use; -1 = free
        self._bytes_of = np.zeros(self.capacity, dtype=np.int64)
        self._free: list[int] = []
        self._top = 0
        self._gen = 0
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def entries(self) -> int:
        return len(self._index)

    def stats(self) -> tuple[int, int, int, int]:
        """(hits, misses, entries, bytes): piece lookups served without tokenizing, pieces tokenized, keys
        held, estimated bytes held."""
        return self.hits, self.misses, self.entries, self.bytes

    def _evict(self, need_slots: int, need_bytes: int) -> bool:
        """Make room for `need_slots` new entries of `need_bytes`; never evicts entries of this batch."""
        free_slots = len(self._free) + (self.capacity - self._top)
        if free_slots >= need_slots and self.bytes + need_bytes <= self.cache_bytes:
            return True
        occupied = np.flatnonzero((self._used >= 0) & (self._used < self._gen))
        if occupied.size == 0:
            return False
        order = occupied[np.argsort(self._used[occupied], kind="stable")]
        # Enough for this batch, and at least half the entries (amortizes the eviction scan).
        by_slots = max(need_slots - free_slots, 0)
        over = self.bytes + need_bytes - self.cache_bytes
        by_bytes = 0 if over <= 0 else int(np.searchsorted(np.cumsum(self._bytes_of[order]), over)) + 1
        count = min(order.size, max(by_slots, by_bytes, (int((self._used >= 0).sum()) + 1) // 2))
        victims = order[:count]
        index = self._index
        for k in self._keys[victims].tolist():
            if isinstance(k, list):
                for a in k:
                    del index[a]
            else:
                del index[k]
        self._keys[victims] = None
        self._used[victims] = -1
        self.bytes -= int(self._bytes_of[victims].sum())
        self._bytes_of[victims] = 0
        self._free.extend(victims.tolist())
        self.evictions += int(victims.size)
        free_slots += int(victims.size)
        return free_slots >= need_slots and self.bytes + need_bytes <= self.cache_bytes

    def _alloc(self, n: int) -> np.ndarray:
        take = min(n, len(self._free))
        out = self._free[len(self._free) - take:]
        del self._free[len(self._free) - take:]
        fresh = n - take
        out.extend(range(self._top, self._top + fresh))
        self._top += fresh
        return np.asarray(out, dtype=np.int64)

    # --- filling -------------------------------------------------------------------------------------

    def first_char_ok(self, c: str) -> bool:
        """A first word starting with `c` tokenizes like the same word after a space."""
        ok = self._first_ok.get(c)
        if ok is None:
            norm = c if self._normalizer is None else self._normalizer.normalize_str(c)
            ok = bool(norm) and not c.isspace() and not norm[0].isspace() and norm[0] != self.scheme.replacement
            self._first_ok[c] = ok
        return ok

    def _strings(self, keys: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Group the pieces of `keys` into a few strings whose tokenization is the concatenation of the
        pieces' (the same property the fast path relies on): (strings, piece order, global piece starts)."""
        spaced = self.scheme.spaced
        if spaced:
            texts = [k[1:] if k[:1] == FIRST else " " + k for k in keys]
            kinds = np.fromiter((0 if k[:1] == FIRST else 1 for k in keys), dtype=np.int8, count=len(keys))
        else:
            texts = keys
            kinds = np.ones(len(keys), dtype=np.int8)
        lens = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        # Empty and space-only pieces are tokenized alone; a first word must start its string.
        if spaced:
            alone = np.flatnonzero(((kinds == 1) & (lens <= 1)) | ((kinds == 0) & (lens == 0)))
        else:
            alone = np.flatnonzero(lens == 0)
        is_alone = np.zeros(len(keys), dtype=bool)
        is_alone[alone] = True
        leads = np.flatnonzero((kinds == 0) & ~is_alone)
        body = np.flatnonzero((kinds == 1) & ~is_alone)
        n_body = max(leads.size, -(-body.size // 256)) if body.size else leads.size
        groups: list[np.ndarray] = []
        parts = np.array_split(body, n_body) if n_body else []
        for i in range(n_body):
            part = parts[i]
            groups.append(np.concatenate([leads[i:i + 1], part]) if i < leads.size else part)
        groups.extend(alone[i:i + 1] for i in range(alone.size))
        seq = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
        sizes = np.fromiter(map(len, groups), dtype=np.int64, count=len(groups))
        sep = "" if spaced else " "
        ordered = _take(texts, seq.tolist())
        strings = []
        pos = 0
        for size in sizes.tolist():
            strings.append(sep.join(ordered[pos:pos + size]))
            pos += size
        step = lens[seq] + len(sep)
        ends = np.cumsum(step)
        first_of = np.repeat(ends[np.cumsum(sizes) - sizes] - step[np.cumsum(sizes) - sizes], sizes)
        within = ends - step - first_of
        string_of = np.repeat(np.arange(len(groups), dtype=np.int64), sizes)
        return strings, seq, (string_of << 32) + within

    def _fill(self, keys: list[str]) -> np.ndarray:
        """Tokenize the pieces of `keys` (new, distinct) in bulk; store their sums; return their slots."""
        slots = self._alloc(len(keys))
        for start in range(0, len(keys), FILL_CHUNK):
            part = keys[start:start + FILL_CHUNK]
            strings, seq, piece_at = self._strings(part)
            encs = self.tokenizer.encode_batch(strings, add_special_tokens=False)
            id_lists = [e.ids for e in encs]
            per_string = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
            total = int(per_string.sum())
            ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=total)
            starts = np.fromiter(map(itemgetter(0), chain.from_iterable(e.offsets for e in encs)),
                                 dtype=np.int64, count=total)
            token_at = (np.repeat(np.arange(len(strings), dtype=np.int64), per_string) << 32) + starts
            owner = np.searchsorted(piece_at, token_at, side="right") - 1  # position in seq
            m = seq.size
            raw = np.bincount(owner, minlength=m)
            where = slots[start:start + FILL_CHUNK][seq]
            if self.record is not None:
                bounds = np.concatenate([[0], np.cumsum(raw)])
                for i, s in enumerate(where.tolist()):
                    self.record[s] = ids[bounds[i]:bounds[i + 1]].tolist()
            if self.unk_id is not None and ids.size:
                keep = ids != self.unk_id
                if not keep.all():
                    ids, owner = ids[keep], owner[keep]
            kept = np.bincount(owner, minlength=m)
            self._raw[where] = raw
            self._kept[where] = kept
            self._sums[where] = self._piece_sums(ids, kept)
        return slots

    def _piece_sums(self, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        m = counts.shape[0]
        if ids.size == 0:
            return np.zeros((m, self.dim), dtype=np.float32)
        indptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        data = np.ones(ids.size, dtype=np.float32) if self.weights is None else self.weights[ids]
        rows = ids if self.mapping is None else self.mapping[ids]
        if self._direct:
            out = sp.csr_matrix((data, rows, indptr), shape=(m, self.table.shape[0])) @ self.table
        else:
            gathered = self.table[rows].astype(np.float32)
            out = sp.csr_matrix((data, np.arange(rows.size), indptr), shape=(m, rows.size)) @ gathered
        return np.asarray(out, dtype=np.float32)

    # --- encoding ------------------------------------------------------------------------------------

    def gate(self, texts: Sequence[str]) -> np.ndarray | None:
        """Boolean mask of the texts that must take the exact path (None: none of them)."""
        n = len(texts)
        bad: np.ndarray | None = None
        if not all(map(str.isprintable, texts)):
            bad = ~np.fromiter(map(str.isprintable, texts), dtype=bool, count=n)
        probes = list(self.contents)
        if not self.scheme.space_runs:
            probes.append("  ")
        if probes:
            joined = "\n".join(texts)  # "\n" is in no printable text and in no probe
            for p in probes:
                if p in joined:
                    hit = np.fromiter(map(str.__contains__, texts, repeat(p)), dtype=bool, count=n)
                    bad = hit if bad is None else bad | hit
        return bad

    def _words(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        if self.scheme.spaced:
            joined = FIRST + (" " + FIRST).join(texts)
        else:
            joined = " ".join(texts)
        if self.scheme.ascii_lower:
            # The normalizer lowercases: lowercasing ASCII letters first changes nothing but the keys.
            joined = joined.lower() if joined.isascii() else joined.encode().lower().decode()
        per_text = np.fromiter(map(str.count, texts, repeat(" ")), dtype=np.int64, count=len(texts))
        per_text += 1
        return joined.split(" "), per_text

    def _resolve(self, words: list[str], slots: np.ndarray) -> int | None:
        """Fill the missing slots of `words` (slots < 0) in place; returns the number of pieces tokenized, or
        None if the cache cannot hold the batch (nothing changed then but evictions)."""
        miss = np.flatnonzero(slots < 0)
        if miss.size == 0:
            return 0
        missing = _take(words, miss.tolist())
        new = list(dict.fromkeys(missing))
        index = self._index
        aliases: dict[str, str] = {}
        if self.scheme.first_alias:
            plain: list[str] = []
            for k in new:
                if k[:1] == FIRST and len(k) > 1 and self.first_char_ok(k[1]):
                    aliases[k] = k[1:]
                else:
                    plain.append(k)
            held = [t for t in dict.fromkeys(aliases.values()) if t in index]
            if held:  # protect the alias targets already cached from this batch's eviction
                self._used[np.fromiter(map(index.__getitem__, held), np.int64, len(held))] = self._gen
            new = list(dict.fromkeys(plain + [t for t in aliases.values() if t not in index]))
        key_bytes = np.fromiter(map(sys.getsizeof, new), dtype=np.int64, count=len(new))
        key_bytes += self.row_bytes + ENTRY_OVERHEAD
        alias_bytes = sum(map(sys.getsizeof, aliases))
        need_bytes = int(key_bytes.sum()) + alias_bytes
        if not self._evict(len(new), need_bytes):
            return None
        filled = self._fill(new) if new else np.zeros(0, dtype=np.int64)
        index.update(zip(new, filled.tolist(), strict=True))
        keys = self._keys
        if new:
            keys[filled] = np.array(new, dtype=object)
        self._bytes_of[filled] = key_bytes
        for a, target in aliases.items():
            s = index[target]
            index[a] = s
            held_keys = keys[s]
            keys[s] = [*held_keys, a] if isinstance(held_keys, list) else [held_keys, a]
            self._bytes_of[s] += sys.getsizeof(a)
        self._used[filled] = self._gen
        self.bytes += need_bytes
        slots[miss] = np.fromiter(map(index.__getitem__, missing), dtype=np.int64, count=len(missing))
        return len(new)

    def pool(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(means float32 [n, dim], kept token counts, exact mask) for gated-in texts; rows under the exact
        mask are not computed (the caller encodes those texts with the exact path)."""
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
        bad = self.gate(texts)
        if bad is None or not bad.any():
            return self._pool_ok(list(texts))
        out = np.zeros((n, self.dim), dtype=np.float32)
        counts = np.zeros(n, dtype=np.int64)
        exact = bad.copy()
        pos = np.flatnonzero(~bad)
        if pos.size:
            out[pos], counts[pos], exact[pos] = self._pool_ok(_take(texts, pos.tolist()))
        return out, counts, exact

    def _pool_ok(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(texts)
        self._gen += 1
        words, per_text = self._words(texts)
        index = self._index
        slots = np.fromiter(map(index.get, words, repeat(-1)), dtype=np.int64, count=len(words))
        self._used[slots[slots >= 0]] = self._gen
        tokenized = self._resolve(words, slots)
        if tokenized is None:
            # The batch needs more distinct pieces than the cache holds: halves, down to the exact path.
            if n == 1:
                return (np.zeros((1, self.dim), np.float32), np.zeros(1, np.int64), np.ones(1, dtype=bool))
            h = n // 2
            a, b = self._pool_ok(texts[:h]), self._pool_ok(texts[h:])
            return (np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), np.concatenate([a[2], b[2]]))
        self.misses += tokenized
        self.hits += len(words) - tokenized
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(per_text, out=indptr[1:])
        starts = indptr[:-1]
        kept = np.add.reduceat(self._kept[slots], starts)
        m = sp.csr_matrix((np.ones(slots.size, dtype=np.float32), slots, indptr), shape=(n, self.capacity))
        out = np.ascontiguousarray(m @ self._sums, dtype=np.float32)
        out /= np.maximum(kept, 1).astype(np.float32)[:, None]
        if self.max_length is None:
            return out, kept, np.zeros(n, dtype=bool)
        raw = np.add.reduceat(self._raw[slots], starts)
        return out, kept, raw > self.max_length

    # --- verification --------------------------------------------------------------------------------

    def piece_ids(self, text: str) -> list[int] | None:
        """The raw token ids the fast path assigns to `text` (recorded while verifying); None if gated out."""
        assert self.record is not None
        bad = self.gate([text])
        if bad is not None and bad[0]:
            return None
        words, _ = self._words([text])
        slots = np.fromiter(map(self._index.get, words, repeat(-1)), dtype=np.int64, count=len(words))
        if (slots < 0).any():
            return None
        return list(chain.from_iterable(self.record.get(int(s), []) for s in slots.tolist()))


@dataclass
class Verification:
    """The result of a self-check: `ok`, or why not; how many texts ran and how many took the fast path;
    the largest vector difference and how many texts differed by more than 1e-6 (allowed only within the
    float32 rounding bound of the exact path's own summation)."""

    ok: bool
    reason: str
    texts: int
    fast_texts: int
    max_abs_diff: float
    over_1e6: int
    seconds: float


def verify(fast: FastPath, texts: Sequence[str], *, exact_encode: Callable[[Sequence[str]], np.ndarray],
           fast_encode: Callable[[Sequence[str]], np.ndarray], cut: Callable[[Sequence[str]], list[str]],
           rounding_bound: Callable[[Sequence[str]], np.ndarray], tol: float = 1e-6) -> Verification:
    """Run `texts` through both paths and require, for every text the fast path takes, the same token ids as
    the tokenizer gives the whole text, and for every text vectors within max(tol, rounding bound): the
    paths add the same float32 rows in a different order, so they may differ by the worst-case float32
    summation error (`rounding_bound`, per text), which exceeds 1e-6 only for long runs of repeated
    tokens. Leaves the cache empty and the counters at zero."""
    t0 = time.perf_counter()
    texts = [t for t in texts if isinstance(t, str)]
    fast.clear()
    fast.record = {}

    def result(ok: bool, reason: str, n_fast: int, diff: float = float("nan"), over: int = 0) -> Verification:
        return Verification(ok, reason, len(texts), n_fast, diff, over, time.perf_counter() - t0)

    try:
        got = fast_encode(texts)
        expected = exact_encode(texts)
        cut_texts = cut(texts)
        reference = fast.tokenizer.encode_batch(cut_texts, add_special_tokens=False)
        n_fast = 0
        for i, (text, ref) in enumerate(zip(cut_texts, reference, strict=True)):
            ids = fast.piece_ids(text)
            if ids is None:
                continue
            n_fast += 1
            if ids != ref.ids:
                return result(False, f"self-check text {i} {text[:60]!r}: its pieces tokenize to {ids[:12]}, "
                              f"the whole text to {ref.ids[:12]}", n_fast)
        if n_fast == 0:
            return result(False, "no self-check text took the fast path", 0)
        if not texts:
            return result(True, "", n_fast, 0.0)
        per_text = np.abs(got - expected).max(axis=1)
        allowed = np.maximum(tol, rounding_bound(texts))
        diff = float(per_text.max())
        over = int((per_text > tol).sum())
        if not np.isfinite(per_text).all() or (per_text > allowed).any():
            worst = int(np.argmax(per_text - allowed))
            return result(False, f"self-check text {worst} {texts[worst][:60]!r}: vectors differ by "
                          f"{per_text[worst]:.3g} > {allowed[worst]:.3g}", n_fast, diff, over)
        return result(True, "", n_fast, diff, over)
    finally:
        fast.record = None
        fast.clear()


# --- the built-in self-check corpus ----------------------------------------------------------------------

_CHECK_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Don't stop: it's 5 o'clock, we'll see—they're here, I'm sure you've heard, she'd know.",
    "Le garçon élève déjà la façade à Noël, où très; ça coûte 12,50 € ?",
    "Die Größe der Straße überrascht das Mädchen bei der Übung. STRASSE ẞ",
    "El niño pidió jalapeños y piñatas ¡ahora! ¿Por qué no?",
    "Ο Σωκράτης είπε: ΟΔΟΣ, οδός, ΣΟΦΟΣ Σ σ ς.",
    "Москва — столица России. Ёлка и ЁЖ!",
    "İstanbul'da ılık bir gün; IĞDIR ve iğne.",
    "مرحبا بالعالم! هذا نص عربي ١٢٣",
    "שלום עולם, זה טקסט בעברית.",
    "नमस्ते दुनिया, यह हिंदी पाठ है। क्षत्रिय",
    "สวัสดีชาวโลก นี่คือข้อความภาษาไทย",
    "東京は日本の首都です。猫が好き!ありがとう、カタカナ漢字",
    "北京欢迎你，中文文本没有空格。",
    "안녕하세요 세계, 한국어 텍스트입니다. 각 갃",
    "🙂🚀 rocket 👍🏽 and flags 🇫🇷 ❤️🤖 ✨",
    "family 👨‍👩‍👧 and coder 🧑‍💻 with zero width joiners",
    "mixed: kafka 東京 straße 🙂 élève 123 — ok?",
    "e\u0301te\u0301 cafe\u0301 na\u0308ive n\u0303 a\u030a combining marks",
    "ﬁnance ﬂow Ｆｕｌｌｗｉｄｔｈ ① ㍿ ² ½ Ⅻ ｶﾀｶﾅ ﾞ",
    "´accent ¨diaeresis ˜tilde ΄tonos ͺypo ゛mark",
    "´ ¨ ˜ ΄ ͺ ゛",
    "ͺ starts", "´starts", "゛starts", "▁starts with the replacement", "Ġstarts", "##starts",
    "a´ b¨ c˜ dͺ e゛ f",
    "URL https://example.com/path?q=1&r=2#frag and mail to name.surname@example.org",
    "def f(x): return {'a': [1, 2, 3]}  # code; x->y && y<=z || !w",
    "Numbers 3.14159 1,000,000 -42 +7 1e-9 0x1F 2024-06-01 12:30:45 50% #hashtag @user",
    "Repeated!!! chars??? ... --- *** ((( ))) [[[ ]]] {{{ }}}",
    "ALL CAPS TEXT AND MiXeD cAsE wOrDs",
    "a", "I", "x y z", ".", "?!", "-", "'", "''", "'s", "'re", "''ll",
    "", " ", "  ", "   ", " leading space", "trailing space ", "  two leading", "two trailing  ",
    "double  space", "triple   space", "many        spaces here",
    "tab\there", "new\nline", "cr\rlf\r\n", "nbsp\u00a0here", "ideographic\u3000space", "em\u2003space",
    "zero\u200bwidth", "soft\u00adhyphen", "bom\ufeffhere", "control\x07bell", "line\u2028separator",
    "[CLS] [SEP] [PAD] [UNK] [MASK] <s> </s> <pad> <unk> <mask> <|endoftext|>",
    "x[UNK]y <unk>z", "[unk] <UNK> [Cls]",
    "supercalifragilisticexpialidocious " * 3,
    "a" * 150, "ab" * 120, "東" * 80, "🙂" * 40, "x" * 99 + " " + "y" * 101,
    "pneumonoultramicroscopicsilicovolcanoconiosis Donaudampfschifffahrtsgesellschaftskapitän",
    "ⅰⅱⅲ ℌℑℜ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐁𝐨𝐥𝐝 ＡＢＣ ｱｲｳ ㌀ ㍻",
    "unknownish zzzzqqqq ŧŋđ ʃʒ ☃ ⌘ ∑ ∫ √ ∞ ≠ ≤",
    "Ǆ ǅ ǆ ﬀ ﬃ ſt ß ŉ ǰ ΐ ΰ և",
]


def _generated(tokenizer: Tokenizer, n: int = 240, seed: int = 20240601) -> list[str]:
    """Texts made of the model's own vocabulary (decoded tokens), joined with and without spaces."""
    rng = np.random.default_rng(seed)
    size = tokenizer.get_vocab_size(with_added_tokens=False)
    if size == 0:
        return []
    ids = rng.integers(0, size, size=n * 4).tolist()
    words = [tokenizer.decode([i], skip_special_tokens=True) for i in ids]
    words = [w for w in words if w]
    out = []
    for i in range(0, len(words) - 4, 4):
        group = words[i:i + 4]
        out.append(" ".join(w.strip() for w in group))
        out.append("".join(group))
    base = [t for t in _CHECK_TEXTS if t.strip()][:20]
    for i, t in enumerate(base):  # every word in first and in later positions, with its neighbours swapped
        ws = t.split(" ")
        out.append(" ".join(ws[::-1]))
        out.append(" ".join(ws[i % len(ws):] + ws[:i % len(ws)]))
        out.append(t.lower())
        out.append(t.upper())
    return out


def check_corpus(tokenizer: Tokenizer) -> list[str]:
    """The built-in self-check corpus: fixed multilingual and edge-case texts plus texts from the vocabulary."""
    return list(dict.fromkeys(_CHECK_TEXTS + _generated(tokenizer)))


def read_check_file(path: str) -> list[str]:
    """One text per line (without the line break); blank lines are kept (they are texts too)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f]
