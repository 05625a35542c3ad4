"""The fast path: tokenize each distinct piece of text once and serve its token ids from a cache.

For short texts tokenization is most of the encoder's time (see docs/benchmarks.md), and most of the words
in a stream repeat. For the tokenizers this module accepts (BERT-style whitespace + punctuation splitting,
SentencePiece `Metaspace`, GPT-2 byte-level BPE, SentencePiece BPE over whole texts), the tokens of a text are
the concatenation of the tokens of its *pieces*, and each piece's tokens depend on that piece only. A piece is
cut from the raw text at a space:

* **words** (the pre-tokenizer drops whitespace: BertPreTokenizer, Whitespace, WhitespaceSplit):
  `text.split(" ")`; the piece is the word.
* **spaced** (Metaspace, ByteLevel: the space belongs to the next token): the first word is its own piece,
  every other word is the piece `" " + word`. Key `"\\0" + word` stands for a first word, key `word` for
  `" " + word`. Where the model treats both alike (Metaspace prepend_scheme always/first, ByteLevel
  add_prefix_space) and the word's first character does not normalize to whitespace, the first-word key is
  an alias of the other one (one tokenization, one entry).
* **whole-text BPE** (SentencePiece BPE as converted for Gemma and Llama: no pre-tokenizer, or Metaspace with
  split=false; spaces become "\u2581" and BPE runs over the whole text): accepted only if no vocabulary token
  joins a character to a "\u2581" after it, so that no merge crosses a word boundary; pieces as above (spaced, or
  words when a Prepend normalizer gives every word its marker).
* Where the normalizer lowercases everything (uncased BERT), keys are lowercased (ASCII letters only, which
  no normalizer step can tell apart from their lowercase), so "The" and "the" share an entry.

The cache maps a piece key to the piece's token ids (before unknown-token removal, so that truncation can
count them), kept in one int32 arena. A batch is split with one `str.split` and looked up with one
`map(dict.get)`. All new pieces of a batch are tokenized with ONE `encode_batch` call: they are joined into
a few strings whose tokenization is, by the same property, the concatenation of the pieces', and each token
is given back to its piece by its character offset. The batch's ids are then gathered from the arena with
numpy (no per-piece Python), truncated to `max_length` tokens per text and stripped of the unknown token;
the encoder pools them exactly as it pools the tokenizer's ids. Same ids, same pooling code: the fast path's
vectors are bit-identical to the exact path's (and to model2vec's).

Only the space (U+0020) cuts pieces; any other character, whitespace or not, stays inside its piece and is
handled there by the real tokenizer. A text takes the exact path instead when the fast path cannot prove it
handles it: an added/special token's content anywhere in it, the key marker "\\0", a space after other
whitespace (byte-level BPE, whose regex joins whitespace runs with a look-ahead), a run of spaces (byte-level
and whole-text BPE), a literal "\u2581" (whole-text BPE) or a space at either end (whole-text BPE with a
Prepend normalizer). model2vec's character pre-cut and the truncation to `max_length`
tokens are applied by the fast path itself (the cut before splitting, the truncation on the gathered ids).

Everything here is checked when a model loads: `verify` runs a built-in multilingual corpus (plus a user's
file) through both paths and requires, per text, the same token ids as the tokenizer gives the whole text,
and the same vectors; see `worker.encoder.Encoder` for how the result turns the fast path on or off.

Memory bound and eviction: an entry is estimated at its key string(s) (`sys.getsizeof`) + `ENTRY_OVERHEAD`
bytes (dict entry, slot arrays) + 4 bytes per token id. When a batch needs room, entries not used by the
current batch are evicted oldest-first by the batch ("generation") in which they were last used, at least
half of the entries at once (LRU by generation with clear-half, so eviction work is amortized), and the
arena is compacted. The slot arrays and the arena are preallocated for the bound with calloc: pages never
written are never resident.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

import numpy as np
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

CHECK_BUDGET = 64 * 1024 * 1024  # cache bound while self-checking (preallocated lazily: only used pages count)
FIRST = "\x00"  # key prefix of a text's first word ("spaced" schemes); a text containing it takes the exact path
_WHITESPACE_SPACE = re.compile(r"\s ")  # whitespace then a space: byte-level BPE's regex may join them
MAX_CROSSING_TOKENS = 1000  # more vocabulary tokens across a word boundary than this: the fast path stays off
ENTRY_OVERHEAD = 112  # bytes per entry beyond its key string(s) and ids: dict entry, slot arrays, list slot

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
    space_runs: bool  # every space is a piece boundary, also inside runs of spaces (else runs take the exact path)
    first_alias: bool  # a first word tokenizes like " " + word unless its first character normalizes to space
    replacement: str  # Metaspace's replacement character (a first word must not start with it to be aliased)
    description: str
    ascii_lower: bool = False  # the normalizer lowercases everything: keys are lowercased (ASCII letters only)
    edge_spaces: bool = True  # a text may start or end with a space (else it takes the exact path)
    space_after_whitespace: bool = True  # a space may follow other whitespace ("\n "; else: exact path)
    gate_chars: tuple[str, ...] = ()  # a text containing one of these takes the exact path
    cross_word: tuple[str, ...] = ()  # raw forms of vocabulary tokens across a word boundary (also gated): pieces
    # are then filled one by one, never joined with other texts' pieces


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


def analyze(spec: dict[str, Any] | Tokenizer) -> Scheme:
    """The piece scheme of a tokenizer from its tokenizer.json (as `light_spec` gives it), or FastPathUnsupported
    naming the component it cannot handle. A `Tokenizer` is serialized first (slow for a large vocabulary)."""
    if isinstance(spec, Tokenizer):
        spec = light_spec(json.loads(spec.to_str()))
    return replace(_analyze(spec), ascii_lower=_lowercases(spec.get("normalizer")))


def _marks(spec: dict[str, Any]) -> set[str]:
    """Characters a tokenizer may put where a space was: U+2581, and any single-character Replace content or
    Metaspace replacement in its spec."""
    found = {"\u2581"}
    for n in _normalizer_types(spec.get("normalizer")):
        content = n.get("content")
        if n.get("type") == "Replace" and isinstance(content, str) and len(content) == 1:
            found.add(content)
    pre = spec.get("pre_tokenizer") or {}
    for step in pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]:
        if step.get("type") == "Metaspace":
            found.add(str(step.get("replacement", "\u2581")))
    return found


def light_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A full tokenizer.json spec without its vocabulary and merges, with `vocab_summary` in their place."""
    out = dict(spec)
    out.update(vocab_summary(spec))
    out["model"] = {k: v for k, v in (spec.get("model") or {}).items() if k not in ("vocab", "merges")}
    return out


def vocab_summary(spec: dict[str, Any]) -> dict[str, Any]:
    """What the encoder and the analysis need from a full tokenizer.json's vocabulary, so that it can be
    dropped after load: model2vec's median token length (added tokens included) and, per space marker, the
    tokens that join a character to the marker after it (whole-text BPE merges across a word boundary)."""
    model = spec.get("model") or {}
    vocab = model.get("vocab") or {}
    tokens = [t[0] for t in vocab] if isinstance(vocab, list) else list(vocab)
    every = set(tokens) | {a.get("content") for a in spec.get("added_tokens") or [] if a.get("content")}
    median = int(np.median([len(t) for t in every])) if every else 1
    joins: dict[str, list[str]] = {}
    for mark in _marks(spec):
        found = []
        for token in tokens:
            at = token.find(mark, 1)
            while at > 0:
                if token[at - 1] != mark:
                    found.append(token)
                    break
                at = token.find(mark, at + 1)
        joins[mark] = found
    return {"median_token_length": median, "marker_joins": joins}


def _effective_pre_tokenizer(pre: dict[str, Any] | None, normalizer: dict[str, Any] | None) -> dict[str, Any] | None:
    """The pre-tokenizer as it acts: a `Split` on a string that the normalizer's last step has replaced everywhere
    (Gemma 3: Replace(" " -> "\u2581"), then Split(" ")) never finds it, so it is no pre-tokenizer."""
    if pre is None or pre.get("type") != "Split" or pre.get("invert"):
        return pre
    pattern = pre.get("pattern") or {}
    text = pattern.get("String") if isinstance(pattern, dict) else None
    steps = _normalizer_types(normalizer)
    if not text or not steps:
        return pre
    last = steps[-1]
    last_pattern = last.get("pattern") or {}
    if (last.get("type") == "Replace" and isinstance(last_pattern, dict) and last_pattern.get("String") == text
            and text not in str(last.get("content", text))):
        return None
    return pre


def _analyze(spec: dict[str, Any]) -> Scheme:
    model = spec.get("model") or {}
    kind = model.get("type")
    if kind not in ("WordPiece", "Unigram", "BPE", "WordLevel"):
        raise FastPathUnsupported(f"model type {kind} is not implemented by the fast path")
    if kind == "BPE" and model.get("dropout") not in (None, 0, 0.0):
        raise FastPathUnsupported("BPE dropout makes tokenization random")
    normalizer = spec.get("normalizer")
    pre = _effective_pre_tokenizer(spec.get("pre_tokenizer"), normalizer)
    if pre is None or (pre.get("type") == "Metaspace" and not pre.get("split", True)):
        return _whole_text_bpe(model, normalizer, pre, spec.get("marker_joins"))
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
                      description=f"spaced: ByteLevel add_prefix_space={prefix}", space_after_whitespace=False)
    raise FastPathUnsupported(f"pre-tokenizer {t0} is not implemented by the fast path")


def _whole_text_bpe(model: dict[str, Any], normalizer: dict[str, Any] | None, pre: dict[str, Any] | None,
                    joins: dict[str, list[str]] | None) -> Scheme:
    """SentencePiece BPE as converted for Gemma or Llama: no pre-tokenizer, spaces become a marker ("\u2581"), and
    BPE runs over the whole text. Its pieces are still independent if no vocabulary token joins a character to
    a marker after it (then no merge ever crosses "x|\u2581"); the cut is before a space that follows a
    non-space, so runs of spaces and literal markers take the exact path."""
    if model.get("type") != "BPE":
        raise FastPathUnsupported("no pre-tokenizer: a whole text is one piece" if pre is None else
                                  "Metaspace with split=false: a whole text is one piece")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise FastPathUnsupported("BPE over a whole text with a subword prefix or an end-of-word suffix")
    steps = _normalizer_types(normalizer)

    def space_to(n: dict[str, Any]) -> str | None:
        pattern = n.get("pattern") or {}
        if n.get("type") == "Replace" and isinstance(pattern, dict) and pattern.get("String") == " ":
            content = str(n.get("content", ""))
            return content if len(content) == 1 and not content.isspace() else None
        return None

    if pre is None:
        mark = space_to(steps[-1]) if steps else None
        if mark is not None and len(steps) == 1:  # Gemma: "a b" -> "a\u2581b"
            scheme = Scheme(spaced=True, space_runs=False, first_alias=False, replacement=mark,
                            description="spaced: whole-text BPE, Replace(' ')", gate_chars=(mark,))
        elif (mark is not None and len(steps) == 2 and steps[0].get("type") == "Prepend"
              and steps[0].get("prepend") == mark):  # Llama: "a b" -> "\u2581a\u2581b"; every word alike
            scheme = Scheme(spaced=False, space_runs=False, first_alias=False, replacement=mark,
                            description="words: whole-text BPE, Prepend + Replace(' ')", edge_spaces=False,
                            gate_chars=(mark,))
        else:
            raise FastPathUnsupported("no pre-tokenizer: a whole text is one piece")
    else:
        _check_normalizer(normalizer, _NO_SPACE_NORMALIZERS)
        mark = str(pre.get("replacement", "\u2581"))
        prepend = pre.get("prepend_scheme", "always" if pre.get("add_prefix_space", True) else "never")
        scheme = Scheme(spaced=True, space_runs=False, first_alias=prepend in ("always", "first"), replacement=mark,
                        description=f"spaced: whole-text BPE, Metaspace(split=false, prepend_scheme={prepend})",
                        gate_chars=(mark,))
    if joins is None or mark not in joins:
        raise FastPathUnsupported("BPE over a whole text: the vocabulary was not summarized (vocab_summary)")
    crossing = joins[mark]
    if crossing and (normalizer is None or any(n.get("type") not in ("Replace", "Prepend")
                                               for n in _normalizer_types(normalizer))):
        raise FastPathUnsupported(f"BPE over a whole text whose vocabulary token {crossing[0]!r} joins a character "
                                  "to the space after it (and the normalizer may change the text around it)")
    if len(crossing) > MAX_CROSSING_TOKENS:
        raise FastPathUnsupported(f"BPE over a whole text with {len(crossing)} vocabulary tokens that join a "
                                  f"character to the space after it (e.g. {crossing[0]!r})")
    # A text holding a crossing token's raw form (the marker back to a space) takes the exact path.
    raw = tuple(sorted({t.replace(mark, " ") for t in crossing}))
    if raw:
        scheme = replace(scheme, gate_chars=scheme.gate_chars + raw, cross_word=raw,
                         description=f"{scheme.description}; {len(raw)} cross-word token(s) gated: "
                                     f"{', '.join(repr(r) for r in raw[:3])}")
    return scheme


def added_contents(tokenizer: Tokenizer) -> tuple[str, ...]:
    """The contents of added tokens: a text containing one takes the exact path."""
    decoder = tokenizer.get_added_tokens_decoder()
    return tuple(sorted({t.content for t in decoder.values() if t.content}))


def literal_regex(strings: Sequence[str]) -> re.Pattern[str] | None:
    """One regex that finds any of `strings`, built as a trie (a model may have thousands of added tokens:
    Gemma 3 has 6,415), so a search costs about one step per character of the text."""
    trie: dict[str, Any] = {}
    for text in strings:
        if not text:
            continue
        node = trie
        for ch in text:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        alts = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    return re.compile(build(trie)) if trie else None


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


@dataclass
class Verification:
    """The result of a self-check: `ok`, or why not; how many texts ran and how many took the fast path;
    the largest difference between the two paths' vectors (the same ids give bit-identical vectors: 0)."""

    ok: bool
    reason: str
    texts: int
    fast_texts: int
    max_abs_diff: float
    seconds: float


def verify(fast: FastPath, texts: Sequence[str], *, exact_encode: Callable[[Sequence[str]], np.ndarray],
           fast_encode: Callable[[Sequence[str]], np.ndarray], cut: Callable[[Sequence[str]], list[str]],
           tol: float = 1e-6) -> Verification:
    """Run `texts` through both paths and require, for every text the fast path takes, the same (untruncated)
    token ids as the tokenizer gives the whole text, and vectors within `tol` of the exact path's for every
    text. Leaves the cache empty and the counters at zero."""
    t0 = time.perf_counter()
    texts = [t for t in texts if isinstance(t, str)]
    budget = fast.cache_bytes
    fast.set_budget(max(budget, CHECK_BUDGET))  # the check is about tokens, whatever the configured bound

    def result(ok: bool, reason: str, n_fast: int, diff: float = float("nan")) -> Verification:
        return Verification(ok, reason, len(texts), n_fast, diff, time.perf_counter() - t0)

    try:
        got = fast_encode(texts)
        expected = exact_encode(texts)
        cut_texts = cut(texts)
        truncation = fast.reference.truncation
        fast.reference.no_truncation()
        try:
            reference = fast.reference.encode_batch(cut_texts, add_special_tokens=False)
        finally:
            if truncation is not None:
                fast.reference.enable_truncation(**truncation)
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
        diff = float(np.abs(got - expected).max()) if got.size else 0.0
        if not np.isfinite(diff) or diff > tol:
            worst = int(np.abs(got - expected).max(axis=1).argmax())
            return result(False, f"self-check text {worst} {texts[worst][:60]!r}: vectors differ by {diff:.3g}",
                          n_fast, diff)
        return result(True, "", n_fast, diff)
    finally:
        fast.set_budget(budget)


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
    "A\U0002ee5e AB\U0002ee5e q x\U0001f600y \U00020000漢 𝄞clef \U0010fffd",
    "<p>Hello <b>world</b></p> <div class=\"x\"> </div> <td>1</td><td>2</td> <unused3> <start_of_turn>",
    "> </ >  </ a> </b> x>▁</y",
    "line one\nline two\n\nparagraph\tcol1\tcol2\r\n  indented\n\tx",
    "def f(x):\n    return {'k': [1, 2]}  # note\n\nclass A:\n\tpass\n",
    "bytes \x00\x01\x1f\x7f \u00ad\u200d\u2028 \ufeff\ufffe end",
    "<pad> <eos> <bos> <unk> <mask> [multimodal] <image_soft_token> </s> <s>",
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
