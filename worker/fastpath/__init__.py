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

from worker.fastpath.analysis import (
    FIRST,
    MAX_CROSSING_TOKENS,
    FastPathUnsupported,
    Scheme,
    added_contents,
    analyze,
    light_spec,
    literal_regex,
    vocab_summary,
)
from worker.fastpath.cache import ENTRY_OVERHEAD, FastPath
from worker.fastpath.verify import CHECK_BUDGET, Verification, check_corpus, read_check_file, verify

__all__ = [
    "CHECK_BUDGET",
    "ENTRY_OVERHEAD",
    "FIRST",
    "MAX_CROSSING_TOKENS",
    "FastPath",
    "FastPathUnsupported",
    "Scheme",
    "Verification",
    "added_contents",
    "analyze",
    "check_corpus",
    "light_spec",
    "literal_regex",
    "read_check_file",
    "verify",
    "vocab_summary",
]
