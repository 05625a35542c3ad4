"""The self-check that turns the fast path on: both paths on a built-in multilingual corpus (plus a user's file),
the same token ids per text and the same vectors, or the fast path stays off with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from worker.fastpath.cache import FastPath

CHECK_BUDGET = 64 * 1024 * 1024  # cache bound while self-checking (preallocated lazily: only used pages count)


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

