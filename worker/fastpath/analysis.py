"""Reading a tokenizer.json: can the fast path cut its texts into independent pieces, and how (the `Scheme`)?

See the package docstring for the schemes; everything here works on the spec dict (`light_spec`), never on a
serialized tokenizer, and is decided once at load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any

import numpy as np
from tokenizers import Tokenizer

FIRST = "\x00"  # key prefix of a text's first word ("spaced" schemes); a text containing it takes the exact path
MAX_CROSSING_TOKENS = 1000  # more vocabulary tokens across a word boundary than this: the fast path stays off


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
    median = int(np.median(np.fromiter(map(len, every), dtype=np.int64, count=len(every)))) if every else 1
    joins: dict[str, list[str]] = {}
    sep = "\uffff"  # a noncharacter: one search over all tokens at once instead of a Python loop over 262k
    joined = sep.join(tokens)
    separable = joined.count(sep) == max(len(tokens) - 1, 0)
    for mark in _marks(spec):
        if separable:
            found = []
            for m in re.finditer(f"[^{re.escape(mark)}{sep}]{re.escape(mark)}", joined):
                start = joined.rfind(sep, 0, m.start()) + 1
                end = joined.find(sep, m.end())
                found.append(joined[start:end if end >= 0 else len(joined)])
            joins[mark] = list(dict.fromkeys(found))
        else:
            joins[mark] = [t for t in tokens if _joins(t, mark)]
    return {"median_token_length": median, "marker_joins": joins}


def _joins(token: str, mark: str) -> bool:
    """`token` holds a character followed by `mark` (not at its start, not a run of marks)."""
    at = token.find(mark, 1)
    while at > 0:
        if token[at - 1] != mark:
            return True
        at = token.find(mark, at + 1)
    return False


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

