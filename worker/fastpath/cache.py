"""The piece cache: token ids per distinct piece of text, filled in bulk, gathered per batch with numpy.

See the package docstring for why the concatenation of the pieces' ids is the text's, the memory bound and
the eviction policy. One class past 400 lines on purpose: the cache's state (slot arrays, arena, index) and its
operations on it (gate, cut, fill, gather, evict) read each other's arrays; apart they would share private state.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Sequence
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from worker.fastpath.analysis import FIRST, Scheme, added_contents, literal_regex

log = logging.getLogger(__name__)

_WHITESPACE_SPACE = re.compile(r"\s ")  # whitespace then a space: byte-level BPE's regex may join them
ENTRY_OVERHEAD = 112  # bytes per entry beyond its key string(s) and ids: dict entry, slot arrays, list slot


def _flat_encoder(tokenizer: Tokenizer) -> Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]:
    def encode(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        id_lists = [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
        counts = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        return np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=int(counts.sum())), counts

    return encode


def _trims_offsets(node: dict[str, Any] | None) -> bool:
    if not node:
        return False
    if node.get("type") == "Sequence":
        return any(_trims_offsets(n) for n in node.get("processors", []))
    return node.get("type") in ("ByteLevel", "RobertaProcessing")


def _take(seq: Sequence[str], positions: list[int]) -> list[str]:
    if not positions:
        return []
    if len(positions) == 1:
        return [seq[positions[0]]]
    return list(itemgetter(*positions)(seq))


class FastPath:
    """Piece cache in front of the tokenizer for one model; see the module docstring."""

    def __init__(
        self,
        *,
        tokenizer: Tokenizer,
        scheme: Scheme,
        unk_id: int | None,
        max_length: int | None,
        cache_bytes: int,
        spec: dict[str, Any] | None = None,
        fill: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]] | None = None,
        join_pieces: bool = True,
    ) -> None:
        self.reference = tokenizer  # the exact path's tokenizer (the self-check lifts its truncation)
        spec = spec or {}
        self.contents = added_contents(tokenizer)
        # Added tokens matched after normalization (XLM-R style): gate on the texts' normalized form.
        normalized = [a["content"] for a in spec.get("added_tokens") or []
                      if a.get("normalized") and a.get("content")] if spec.get("normalizer") else []
        # Joining many pieces into one string for the tokenizer is safe only where nothing can match across
        # two pieces: no vocabulary token across a word boundary, no added token with a space in it.
        if scheme.cross_word or any(" " in c for c in [*self.contents, *normalized]):
            join_pieces = False
        if fill is None and not join_pieces:
            fill = _flat_encoder(tokenizer)
        self.fill = None if join_pieces else fill  # one text per piece (a flat encoder)
        tok = tokenizer
        if self.fill is None and _trims_offsets(spec.get("post_processor")):
            # The fill gives tokens back to their pieces by offset; a ByteLevel/Roberta post-processor trims
            # offsets (it changes no id with add_special_tokens=False), so the fill gets a copy without it.
            tok = Tokenizer.from_str(tokenizer.to_str())
            tok.post_processor = None
        tok.no_truncation()
        tok.no_padding()
        self.tokenizer = tok
        self.scheme = scheme
        self.unk_id = unk_id
        self.max_length = max_length
        self._normalizer = tok.normalizer
        probes = list(self.contents) + list(scheme.gate_chars) + ([] if scheme.space_runs else ["  "])
        self._probe = literal_regex(probes)
        self._normalized_probe = literal_regex(normalized)
        self._first_ok: dict[str, bool] = {}
        self.set_budget(cache_bytes)

    def set_budget(self, cache_bytes: int) -> None:
        """Bound the cache to `cache_bytes` (estimated) and empty it."""
        self.cache_bytes = int(cache_bytes)
        self.slot_capacity = max(1, self.cache_bytes // (ENTRY_OVERHEAD + 50))
        self.arena_capacity = max(1, self.cache_bytes // 4)
        self.clear()

    # --- cache state ---------------------------------------------------------------------------------

    def clear(self) -> None:
        """Drop every entry and zero the counters."""
        self._index: dict[str, int] = {}
        self._keys: list[Any] = []  # slot -> key, or list of keys when aliased; None when free
        # Preallocated for the bound (calloc): pages never written are never resident.
        self._start = np.zeros(self.slot_capacity, dtype=np.int64)  # arena offset of the piece's ids
        self._len = np.zeros(self.slot_capacity, dtype=np.int32)  # token ids, unknown tokens included
        self._used = np.zeros(self.slot_capacity, dtype=np.int64)  # generation of last use; 0 = free
        self._bytes_of = np.zeros(self.slot_capacity, dtype=np.int64)
        self._arena = np.zeros(self.arena_capacity, dtype=np.int32)
        self._arena_top = 0
        self._free: list[int] = []
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

    def _room(self, slots: int, tokens: int, nbytes: int) -> bool:
        free_slots = len(self._free) + (self.slot_capacity - len(self._keys))
        return (free_slots >= slots and self._arena_top + tokens <= self.arena_capacity
                and self.bytes + nbytes <= self.cache_bytes)

    def _evict(self, slots: int, tokens: int, nbytes: int) -> bool:
        """Make room for `slots` new entries of `tokens` ids and `nbytes`; never evicts this batch's entries."""
        if self._room(slots, tokens, nbytes):
            return True
        live = np.flatnonzero(self._used[:len(self._keys)] > 0)
        old = live[self._used[live] < self._gen]
        if old.size:
            order = old[np.argsort(self._used[old], kind="stable")]
            # Enough for this batch, and at least half the entries (amortizes the eviction and compaction).
            free_slots = len(self._free) + (self.slot_capacity - len(self._keys))
            need = [max(slots - free_slots, 0), (live.size + 1) // 2]
            over = self.bytes + nbytes - self.cache_bytes
            if over > 0:
                need.append(int(np.searchsorted(np.cumsum(self._bytes_of[order]), over)) + 1)
            live_tokens = int(self._len[live].sum())
            over_tokens = live_tokens + tokens - self.arena_capacity
            if over_tokens > 0:
                need.append(int(np.searchsorted(np.cumsum(self._len[order]), over_tokens)) + 1)
            victims = order[:min(order.size, max(need))]
            index = self._index
            keys = self._keys
            for s in victims.tolist():
                k = keys[s]
                if isinstance(k, list):
                    for a in k:
                        del index[a]
                else:
                    del index[k]
                keys[s] = None
            self._used[victims] = 0
            self._len[victims] = 0
            self.bytes -= int(self._bytes_of[victims].sum())
            self._bytes_of[victims] = 0
            self._free.extend(victims.tolist())
            self.evictions += int(victims.size)
        self._compact()
        return self._room(slots, tokens, nbytes)

    def _compact(self) -> None:
        """Move the live entries' ids to the front of the arena, in arena order."""
        live = np.flatnonzero(self._used[:len(self._keys)] > 0)
        live = live[np.argsort(self._start[live], kind="stable")]
        lengths = self._len[live].astype(np.int64)
        new_start = np.cumsum(lengths) - lengths
        self._arena[:int(lengths.sum())] = self._arena[_ranges(self._start[live], lengths)]
        self._start[live] = new_start
        self._arena_top = int(lengths.sum())

    def _alloc(self, n: int) -> list[int]:
        take = min(n, len(self._free))
        out = self._free[len(self._free) - take:]
        del self._free[len(self._free) - take:]
        first = len(self._keys)
        self._keys.extend([None] * (n - take))
        out.extend(range(first, first + n - take))
        return out

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
        pieces' (the same property the fast path relies on, and verifies): (strings, the keys' order in
        them, each piece's start as string index << 32 | character offset)."""
        spaced = self.scheme.spaced
        n = len(keys)
        if spaced:
            texts = [k[1:] if k[:1] == FIRST else " " + k for k in keys]
            first = np.fromiter((k[:1] == FIRST for k in keys), dtype=bool, count=n)
        else:
            texts = keys
            first = np.zeros(n, dtype=bool)
        lens = np.fromiter(map(len, texts), dtype=np.int64, count=n)
        # Empty and space-only pieces are tokenized alone; a first word must start its string.
        alone_mask = (lens == 0) | (~first & (lens <= 1)) if spaced else lens == 0
        alone = np.flatnonzero(alone_mask)
        leads = np.flatnonzero(first & ~alone_mask)
        body = np.flatnonzero(~first & ~alone_mask)
        n_strings = max(leads.size, -(-body.size // 256))
        groups: list[np.ndarray] = []
        parts = np.array_split(body, n_strings) if n_strings else []
        for i in range(n_strings):
            groups.append(np.concatenate([leads[i:i + 1], parts[i]]) if i < leads.size else parts[i])
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
        heads = np.cumsum(sizes) - sizes
        within = ends - step - np.repeat(ends[heads] - step[heads], sizes)
        if sep:  # the separating space belongs to the next piece (its token, if any, starts there)
            within -= len(sep)
            within[heads] = 0
        string_of = np.repeat(np.arange(len(groups), dtype=np.int64), sizes)
        return strings, seq, (string_of << 32) + within

    def _tokenize_pieces(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokenize the pieces of `keys` with one tokenizer call: (ids int32, the keys' order in them, the
        number of ids of each key in that order)."""
        if self.fill is not None:  # a flat encoder: one text per piece, no offsets needed
            texts = [k[1:] if k[:1] == FIRST else " " + k for k in keys] if self.scheme.spaced else keys
            flat, lengths = self.fill(texts)
            return flat.astype(np.int32), np.arange(len(keys), dtype=np.int64), lengths
        strings, seq, piece_at = self._strings(keys)
        encs = self.tokenizer.encode_batch(strings, add_special_tokens=False)
        id_lists = [e.ids for e in encs]
        per_string = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        total = int(per_string.sum())
        ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=total)
        starts = np.fromiter(map(itemgetter(0), chain.from_iterable(e.offsets for e in encs)), dtype=np.int64,
                             count=total)
        token_at = (np.repeat(np.arange(len(strings), dtype=np.int64), per_string) << 32) + starts
        owner = np.searchsorted(piece_at, token_at, side="right") - 1  # position in seq, non-decreasing
        return ids, seq, np.bincount(owner, minlength=seq.size)

    # --- tokenizing ----------------------------------------------------------------------------------

    def gate(self, texts: Sequence[str]) -> np.ndarray | None:
        """Boolean mask of the texts that must take the exact path (None: none of them)."""
        n = len(texts)
        bad: np.ndarray | None = None

        def flag(hit: np.ndarray) -> None:
            nonlocal bad
            bad = hit if bad is None else bad | hit

        joined = FIRST.join(texts)
        if joined.count(FIRST) != max(n - 1, 0):  # the key marker inside a text
            flag(np.fromiter(map(str.__contains__, texts, repeat(FIRST)), dtype=bool, count=n))
        probe = self._probe  # a hit across the joiner is a false alarm, which the per-text check clears
        if probe is not None and probe.search(joined):
            flag(np.fromiter((probe.search(t) is not None for t in texts), dtype=bool, count=n))
        if self._normalized_probe is not None and self._normalizer is not None:
            normalized = list(map(self._normalizer.normalize_str, texts))
            if self._normalized_probe.search(FIRST.join(normalized)):
                flag(np.fromiter((self._normalized_probe.search(t) is not None for t in normalized), dtype=bool,
                                 count=n))
        if not self.scheme.space_after_whitespace and _WHITESPACE_SPACE.search(joined):
            flag(np.fromiter((_WHITESPACE_SPACE.search(t) is not None for t in texts), dtype=bool, count=n))
        if not self.scheme.edge_spaces:
            edge = np.fromiter((t[:1] == " " or t[-1:] == " " for t in texts), dtype=bool, count=n)
            if edge.any():
                flag(edge)
        return bad

    def words(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The piece keys of `texts`, flat, and how many belong to each text."""
        if self.scheme.spaced:
            joined = FIRST + (" " + FIRST).join(texts)
        else:
            joined = " ".join(texts)
        if self.scheme.ascii_lower:
            joined = joined.lower() if joined.isascii() else joined.encode().lower().decode()
        per_text = np.fromiter(map(str.count, texts, repeat(" ")), dtype=np.int64, count=len(texts))
        per_text += 1
        return joined.split(" "), per_text

    def _resolve(self, words: list[str], slots: np.ndarray) -> int | None:
        """Fill the missing slots of `words` (slots < 0) in place; returns the number of pieces tokenized, or
        None if the cache cannot hold the batch."""
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
            if held:  # the alias targets already cached belong to this batch now
                self._used[np.fromiter(map(index.__getitem__, held), np.int64, len(held))] = self._gen
            new = list(dict.fromkeys(plain + [t for t in aliases.values() if t not in index]))
        key_bytes = np.fromiter(map(sys.getsizeof, new), dtype=np.int64, count=len(new)) + ENTRY_OVERHEAD
        alias_bytes = sum(map(sys.getsizeof, aliases))
        if new:
            ids, seq, lengths = self._tokenize_pieces(new)
        else:
            ids, seq, lengths = np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        need = int(key_bytes.sum()) + alias_bytes + 4 * ids.size
        if not self._evict(len(new), ids.size, need):
            return None
        slots_new = self._alloc(len(new))
        filled = np.asarray(slots_new, dtype=np.int64)
        where = filled[seq]
        top = self._arena_top
        self._arena[top:top + ids.size] = ids
        self._start[where] = top + np.cumsum(lengths) - lengths
        self._len[where] = lengths
        self._arena_top = top + ids.size
        keys = self._keys
        for k, s in zip(new, slots_new, strict=True):
            keys[s] = k
        index.update(zip(new, slots_new, strict=True))
        self._bytes_of[filled] = key_bytes + 4 * self._len[filled].astype(np.int64)
        self.bytes += int(self._bytes_of[filled].sum()) + alias_bytes
        self._used[filled] = self._gen
        for a, target in aliases.items():
            s = index[target]
            index[a] = s
            held_keys = keys[s]
            keys[s] = [*held_keys, a] if isinstance(held_keys, list) else [held_keys, a]
            self._bytes_of[s] += sys.getsizeof(a)
        slots[miss] = np.fromiter(map(index.__getitem__, missing), dtype=np.int64, count=len(missing))
        return len(new)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(flat token ids int64, count per text, exact mask): the ids `Encoder.tokenize` would give, after
        truncation to max_length and unknown-token removal, for every text not under the exact mask (those
        have no ids and count 0; the caller tokenizes them with the exact path)."""
        n = len(texts)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
        bad = self.gate(texts)
        if bad is None or not bad.any():
            return self._tokenize_ok(list(texts))
        counts = np.zeros(n, dtype=np.int64)
        exact = bad.copy()
        pos = np.flatnonzero(~bad)
        if pos.size == 0:
            return np.zeros(0, np.int64), counts, exact
        flat, c, e = self._tokenize_ok(_take(texts, pos.tolist()))
        counts[pos] = c
        exact[pos] = e
        return flat, counts, exact

    def _tokenize_ok(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(texts)
        self._gen += 1
        words, per_text = self.words(texts)
        index = self._index
        slots = np.fromiter(map(index.get, words, repeat(-1)), dtype=np.int64, count=len(words))
        self._used[slots[slots >= 0]] = self._gen
        tokenized = self._resolve(words, slots)
        if tokenized is None:
            # The batch needs more than the cache holds: halves, down to the exact path for one text.
            if n == 1:
                return np.zeros(0, np.int64), np.zeros(1, np.int64), np.ones(1, dtype=bool)
            h = n // 2
            a, b = self._tokenize_ok(texts[:h]), self._tokenize_ok(texts[h:])
            return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), np.concatenate([a[2], b[2]])
        self.misses += tokenized
        self.hits += len(words) - tokenized
        lengths = self._len[slots].astype(np.int64)
        ids = self._arena[_ranges(self._start[slots], lengths)].astype(np.int64)
        word_end = np.cumsum(per_text)
        raw = np.add.reduceat(lengths, word_end - per_text)  # every text has at least one word
        keep: np.ndarray | None = None
        if self.max_length is not None and int(raw.max()) > self.max_length:
            # Truncation keeps each text's first max_length tokens, unknown tokens included.
            text_start = np.cumsum(raw) - raw
            keep = np.arange(ids.size) - np.repeat(text_start, raw) < self.max_length
        if self.unk_id is not None:
            known = ids != self.unk_id
            if not known.all():
                keep = known if keep is None else keep & known
        if keep is None:
            return ids, raw, np.zeros(n, dtype=bool)
        owner = np.repeat(np.arange(n), raw)[keep]
        return ids[keep], np.bincount(owner, minlength=n).astype(np.int64), np.zeros(n, dtype=bool)

    # --- verification --------------------------------------------------------------------------------

    def piece_ids(self, text: str) -> list[int] | None:
        """The untruncated token ids the cache holds for `text`'s pieces; None if gated out or not cached."""
        bad = self.gate([text])
        if bad is not None and bad[0]:
            return None
        words, _ = self.words([text])
        slots = np.fromiter(map(self._index.get, words, repeat(-1)), dtype=np.int64, count=len(words))
        if (slots < 0).any():
            return None
        return self._arena[_ranges(self._start[slots], self._len[slots].astype(np.int64))].tolist()


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges: start[i] .. start[i] + length[i] for every i, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(total)


