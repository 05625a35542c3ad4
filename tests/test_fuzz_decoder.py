"""Fuzzed input decoding (worker.codecs.InputDecoder, EMBED_INPUT__FORMAT json and text): random bytes, mutated
valid messages, deep nesting, lone surrogates, BOMs, huge ids, non-UTF-8, sizes around EMBED_INPUT__MAX_BYTES.

Every message becomes exactly one of: a record the output can carry (its text and id faithful to the input), or
a dead letter with a reason from `Reason` and a message. Nothing raises and nothing takes long."""

from __future__ import annotations

import json
import time

import numpy as np
import orjson
import pytest
from fuzzkit import TEXT, fuzz
from hypothesis import given
from hypothesis import strategies as st

from worker.codecs import Decoded, InputDecoder, OutputEncoder, OutputRecord, Reason, fallback_id
from worker.settings import EmptyTextPolicy, InputFormat, InputSettings, OutputSettings

REASONS = {v for k, v in vars(Reason).items() if k.isupper()}
KEEP = ["meta"]  # an input field copied into the output's payload (EMBED_OUTPUT__PAYLOAD_FIELDS)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=12),
                   st.floats(allow_nan=False, allow_infinity=False))
JSONISH = st.recursive(SCALAR, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                       max_leaves=8)
HUGE = st.one_of(st.integers(2**64, 10**40), st.integers(-(10**40), -(2**63) - 1),
                 st.sampled_from([2**64, -(2**63) - 1, 10**29, 123456789012345678901234567890, 10**300]))
ID = st.one_of(SCALAR, HUGE, st.lists(SCALAR, max_size=3), st.dictionaries(st.text(max_size=4), SCALAR, max_size=2))
DOC = st.fixed_dictionaries({"text": TEXT}, optional={"id": ID, "meta": JSONISH, "other": JSONISH})
KEY = st.one_of(st.none(), st.binary(max_size=12))
DEPTH = st.one_of(st.integers(1, 300), st.sampled_from([253, 254, 255, 256, 1023, 1024, 1025]), st.integers(300, 1500))


def utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def run(values: list[bytes | None], keys: list[bytes | None], fmt: InputFormat = InputFormat.json,
        max_bytes: int = 1_000_000, empty: EmptyTextPolicy = EmptyTextPolicy.dead_letter) -> tuple[Decoded, dict]:
    """Decode a batch and check what holds for any input; returns the result and {index: reason} of the bad."""
    dec = InputDecoder(InputSettings(format=fmt, max_bytes=max_bytes, empty_text=empty), keep_fields=KEEP)
    where = [("texts", 3, 100 + i) for i in range(len(values))]
    t0 = time.perf_counter()
    out = dec.decode(values, keys, where)
    assert time.perf_counter() - t0 < 5, "decoding a small batch took over 5 s"
    bad = {i: reason for i, reason, _ in out.bad}
    assert sorted([*out.good, *bad]) == list(range(len(values))), "each message exactly once, good or bad"
    assert all(reason in REASONS and isinstance(msg, str) and msg for _, reason, msg in out.bad), out.bad
    for i, v in enumerate(values):
        expected = (Reason.NULL_VALUE if v is None else Reason.TOO_LARGE if len(v) > max_bytes
                    else Reason.INVALID_UTF8 if not utf8(v) else None)
        if expected is not None or bad.get(i) == Reason.INVALID_UTF8:
            assert bad.get(i) == expected, (v, bad.get(i))
    # every good record goes through the JSON output (id and kept fields) and reads back the same
    recs = [OutputRecord(i, ident, payload=(out.fields[k] if out.fields else {}))
            for k, (i, ident) in enumerate(zip(out.good, out.ids, strict=True))]
    encoder = OutputEncoder(OutputSettings(payload_fields=KEEP), "m", 2)
    for rec, text, body in zip(recs, out.texts, encoder.values(recs, np.zeros((len(recs), 2), np.float32)),
                               strict=True):
        text.encode("utf-8")  # a text the tokenizer and the payload can carry: no lone surrogate
        doc = json.loads(body)
        assert doc == orjson.loads(body) and doc["id"] == rec.ident and type(doc["id"]) is type(rec.ident)
        assert doc.get("meta") == (rec.payload or {}).get("meta")
    if fmt == InputFormat.json:
        for k, i in enumerate(out.good):
            v = values[i]
            assert v is not None
            assert json.loads(v)["text"] == out.texts[k]  # what the strict parser in the stdlib reads too
    return out, bad


def expected_id(doc: dict, key: bytes | None, offset: int):
    ident = doc.get("id")
    if ident is None:
        return fallback_id(key, "texts", 3, offset)
    if isinstance(ident, int) and not isinstance(ident, bool) and not -(2**63) <= ident < 2**64:
        return str(ident)  # no 64-bit integer holds it: its digits, never a float that two ids could share
    return ident


@fuzz(250)
@given(docs=st.lists(DOC, min_size=1, max_size=6), ascii_only=st.booleans(), data=st.data())
def test_valid_json_messages_decode_faithfully(docs, ascii_only, data):
    values: list[bytes | None] = [json.dumps(d, ensure_ascii=ascii_only).encode() for d in docs]
    keys = data.draw(st.lists(KEY, min_size=len(docs), max_size=len(docs)))
    out, bad = run(values, keys)
    for i, d in enumerate(docs):
        if not d["text"] or d["text"].isspace():
            assert bad[i] == Reason.EMPTY_TEXT
            continue
        assert i not in bad, (d, bad.get(i))
        k = out.good.index(i)
        assert out.texts[k] == d["text"]
        got, want = out.ids[k], expected_id(d, keys[i], 100 + i)
        if isinstance(d.get("id"), list | dict):
            assert isinstance(got, str) and json.loads(got) == want  # a nested id travels as its JSON text
        else:
            assert got == want and type(got) is type(want), (d.get("id"), got)
        assert out.fields[k] == ({"meta": d["meta"]} if "meta" in d else {})


def _nest(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def mutated(draw) -> bytes | None:
    """A valid message changed the way a broken producer, a wrong serializer or an attacker would."""
    doc = draw(DOC)
    raw = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()
    how = draw(st.sampled_from(["flip", "insert", "truncate", "bom", "utf16", "latin1", "surrogate", "cesu",
                                "nest-id", "nest-meta", "nest-all", "huge-id", "random", "not-object", "text"]))
    pos = draw(st.integers(0, len(raw)))
    if how == "flip" and raw:
        pos = min(pos, len(raw) - 1)
        return raw[:pos] + bytes([draw(st.integers(0, 255))]) + raw[pos + 1:]
    if how == "insert":
        return raw[:pos] + draw(st.binary(min_size=1, max_size=4)) + raw[pos:]
    if how == "truncate":
        return raw[:pos]
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    if how in ("utf16", "latin1"):
        return json.dumps(doc, ensure_ascii=False).encode("utf-16" if how == "utf16" else "latin-1", "replace")
    if how in ("surrogate", "cesu"):  # a lone surrogate: as a JSON escape, or as its 3 bytes (not UTF-8)
        lone = draw(st.sampled_from(["\ud800", "\udc00", "\udbff", "\udfff"]))
        doc["text"] = doc["text"][:pos] + lone + doc["text"][pos:]
        return json.dumps(doc, ensure_ascii=how == "surrogate").encode("utf-8", "surrogatepass")
    if how.startswith("nest"):
        depth = draw(DEPTH)
        if how == "nest-all":
            return _nest(depth)
        return b'{"' + how[5:].encode() + b'":' + _nest(depth) + b"," + raw[1:]  # raw has "text": never {}
    if how == "huge-id":
        return b'{"id":' + str(draw(HUGE)).encode() + b"," + raw[1:]
    if how == "random":
        return draw(st.binary(max_size=64))
    if how == "not-object":
        return json.dumps(draw(JSONISH)).encode()
    text = draw(JSONISH)  # "text" of another type, or no "text" at all
    return json.dumps({**doc, "text": text} if draw(st.booleans()) else {"id": doc.get("id")}).encode()


@fuzz(400)
@given(values=st.lists(st.one_of(mutated(), st.none(), st.binary(max_size=40)), min_size=1, max_size=6),
       max_bytes=st.sampled_from([1, 40, 400, 1_000_000]), empty=st.sampled_from(list(EmptyTextPolicy)),
       data=st.data())
def test_any_json_input_decodes_or_is_dead_lettered(values, max_bytes, empty, data):
    keys = data.draw(st.lists(KEY, min_size=len(values), max_size=len(values)))
    run(values, keys, InputFormat.json, max_bytes, empty)


RAW_TEXT = st.one_of(st.none(), st.binary(max_size=48), TEXT.map(str.encode),
                     TEXT.map(lambda t: b"\xef\xbb\xbf" + t.encode()),
                     st.sampled_from(["\ud800", "a\udfffb"]).map(lambda t: t.encode("utf-8", "surrogatepass")))


@fuzz(250)
@given(values=st.lists(RAW_TEXT, min_size=1, max_size=6), max_bytes=st.sampled_from([1, 40, 1_000_000]),
       empty=st.sampled_from(list(EmptyTextPolicy)), data=st.data())
def test_text_format_takes_any_utf8_and_only_utf8(values, max_bytes, empty, data):
    keys = data.draw(st.lists(KEY, min_size=len(values), max_size=len(values)))
    out, bad = run(values, keys, InputFormat.text, max_bytes, empty)
    for i, v in enumerate(values):
        if v is None or len(v) > max_bytes or not utf8(v):
            continue  # checked by run()
        text = v.decode("utf-8")
        if empty == EmptyTextPolicy.dead_letter and (not text or text.isspace()):
            assert bad[i] == Reason.EMPTY_TEXT
            continue
        k = out.good.index(i)
        assert out.texts[k] == text and out.ids[k] == fallback_id(keys[i], "texts", 3, 100 + i)


@pytest.mark.parametrize(("value", "reason", "ident"), [
    (b'{"id": 1, "text": "a\\ud800b"}', Reason.INVALID_JSON, None),  # escaped lone surrogates: not Unicode
    (b'{"id": 1, "text": "\\udc00"}', Reason.INVALID_JSON, None),
    ('{"id": 1, "text": "\ud800"}'.encode("utf-8", "surrogatepass"), Reason.INVALID_UTF8, None),
    (b'\xef\xbb\xbf{"id": 1, "text": "a"}', Reason.INVALID_JSON, None),  # orjson refuses a BOM; said in the message
    (b'{"id": ' + _nest(254) + b', "text": "a"}', None, "[" * 254 + "]" * 254),
    (b'{"id": ' + _nest(255) + b', "text": "a"}', Reason.INVALID_JSON, None),  # parsed, but no JSON text of it
    (b'{"id": ' + _nest(1024) + b', "text": "a"}', Reason.INVALID_JSON, None),
    (b'{"meta": ' + _nest(300) + b', "text": "a"}', Reason.INVALID_JSON, None),  # a payload field, the same
    (b'{"id": ' + _nest(1100) + b', "text": "a"}', Reason.INVALID_JSON, None),  # orjson's depth limit
    (b'{"id": 123456789012345678901234567890, "text": "a"}', None, "123456789012345678901234567890"),
    (b'{"id": 123456789012345678901234567891, "text": "a"}', None, "123456789012345678901234567891"),
    (b'{"id": -9223372036854775809, "text": "a"}', None, "-9223372036854775809"),
    (b'{"id": 18446744073709551615, "text": "a"}', None, 18446744073709551615),
    (b'{"id": 1e30, "text": "a"}', None, 1e30),  # a float stays a float
    (b'{"id": 1e400, "text": "a"}', Reason.INVALID_JSON, None),
], ids=["escaped-high-surrogate", "escaped-low-surrogate", "raw-surrogate", "bom", "id-nested-254", "id-nested-255",
        "id-nested-1024", "payload-nested-300", "id-nested-1100", "id-30-digits", "id-30-digits-plus-1",
        "id-below-int64", "id-u64-max", "id-float", "id-float-overflow"])
def test_hard_cases(value, reason, ident):
    out, bad = run([value], [None])
    assert bad.get(0) == reason
    if reason is None:
        assert out.ids == [ident] and type(out.ids[0]) is type(ident)


MB = 1_000_000


@pytest.mark.parametrize("value", [
    b"[" * MB, b"{" * MB, b'{"a":' * (MB // 5), b'{"text": "' + b"\\ud800" * (MB // 7) + b'"}',
    b'{"text": "' + b"\\u00e9" * (MB // 7) + b'"}', b'{"id": ' + b"9" * (MB - 20) + b', "text": "a"}',
    b'{"id": 0.' + b"1" * (MB - 20) + b', "text": "a"}', b" " * (MB - 20) + b'{"text": "a"}',
    bytes(range(256)) * (MB // 256), b"\xff" * MB,
], ids=["open-arrays", "open-objects", "nested-objects", "surrogate-escapes", "escapes", "long-integer-id",
        "long-float-id", "leading-space", "all-bytes", "invalid-utf8"])
def test_worst_inputs_at_the_size_limit_are_quick(value):
    t0 = time.perf_counter()
    run([value], [None], max_bytes=MB)
    assert time.perf_counter() - t0 < 5
