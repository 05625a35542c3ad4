"""Fault 4: a poison stream from a seeded fuzzer, mixed into good messages: random bytes, invalid UTF-8,
invalid JSON, 100k levels of nesting, huge JSON, tombstones, 10 MB texts, control characters, non-string
texts, odd ids, keys and headers. The worker never crashes (same PID, exit 0 on SIGTERM), outputs + dead
letters = inputs exactly, and every bad message is in the dead-letter topic with its reason."""

from __future__ import annotations

import collections
import random
import string
import time
from dataclasses import dataclass

import orjson
import pytest
from faultkit import MB, Stream, Tally, header_index, note, pick, reconcile, seeded

from kafkatools import WorkerProcess, create_topics, produce, unique, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]

MAX_BYTES = 1_000_000  # the worker's default EMBED_INPUT__MAX_BYTES
DLQ_VALUE_MAX = 900_000  # the worker's default EMBED_INPUT__DEAD_LETTER_MAX_VALUE_BYTES
OUTPUT = "output"
WORDS = "the quick brown fox jumps over a lazy dog streaming systems embed every event kafka vectors".split()


@dataclass
class Case:
    kind: str
    key: bytes | None
    value: bytes | None
    expect: frozenset[str]  # "output" or the dead-letter reasons acceptable for this message
    headers: list | None = None


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def doc(ident: str, text: object, **extra: object) -> bytes:
    return orjson.dumps({"id": ident, "text": text, **extra})


def random_bytes_reason(value: bytes) -> frozenset[str]:
    """What the contract says about arbitrary bytes: not UTF-8 -> invalid_utf8, else not a JSON object."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return frozenset({"invalid_utf8"})
    return frozenset({"invalid_json"})


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def poison(rng: random.Random, i: int) -> Case:
    """One bad (or awkward but valid) message; the kind is drawn with fixed weights."""
    ident = f"p{i}"
    kind = rng.choices(
        ["random_bytes", "invalid_utf8", "invalid_json", "not_an_object", "deep_nesting", "deep_field",
         "shallow_nesting", "huge_json_ok", "huge_json_too_large", "tombstone", "control_chars", "raw_control_char",
         "whitespace_controls", "non_string_text", "missing_text", "empty_text", "lone_surrogate", "odd_id",
         "odd_key", "odd_headers", "nan_number", "duplicate_key"],
        weights=[12, 8, 10, 5, 2, 2, 2, 0.3, 0.3, 6, 6, 4, 3, 8, 4, 4, 3, 5, 4, 3, 2, 2])[0]
    key: bytes | None = f"pk{i % 37}".encode()
    if kind == "random_bytes":
        value = rng.randbytes(rng.randint(1, 3000))
        if value.lstrip().startswith(b"{"):
            value = b"\xff" + value
        return Case(kind, key, value, random_bytes_reason(value))
    if kind == "invalid_utf8":
        bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"])
        good = doc(ident, words(rng, 5))
        cut = good.index(b'"text":"') + 8 + rng.randint(0, 5)
        return Case(kind, key, good[:cut] + bad + good[cut:], frozenset({"invalid_utf8"}))
    if kind == "invalid_json":
        good = doc(ident, words(rng, 6))
        value = rng.choice([
            good[: rng.randint(1, len(good) - 1)],               # truncated
            good + b"}",                                         # trailing garbage
            good.replace(b'"', b"'"),                            # single quotes
            good[:-1] + b",}",                                   # trailing comma
            b'{id: "x", text: "unquoted keys"}',
            b"{" * rng.randint(1, 50),
            b"",
            b"   ",
        ])
        return Case(kind, key, value, frozenset({"invalid_json"}))
    if kind == "not_an_object":
        value = rng.choice([b"[1, 2, 3]", b'"just a string"', b"42", b"null", b"true", b"[]",
                            orjson.dumps([{"id": ident, "text": "inside a list"}])])
        return Case(kind, key, value, frozenset({"invalid_json"}))
    if kind == "deep_nesting":  # 100k levels: must be refused without recursion trouble
        value = rng.choice([b"[" * 100_000, nested(100_000), b'{"a":' * 100_000])
        return Case(kind, key, value, frozenset({"invalid_json"}))
    if kind == "deep_field":  # a good text next to a field nested past any sane parser limit
        value = b'{"id":"' + ident.encode() + b'","text":"ok then","deep":' + nested(5_000) + b"}"
        return Case(kind, key, value, frozenset({"invalid_json"}))
    if kind == "shallow_nesting":  # nested, but well within limits: a normal message
        value = b'{"id":"' + ident.encode() + b'","text":"nested ok","deep":' + nested(200) + b"}"
        return Case(kind, key, value, frozenset({OUTPUT}))
    if kind == "huge_json_ok":  # just under the size limit: 10k fields and a ~700 KB text
        value = doc(ident, words(rng, 120_000), **{f"f{j}": j for j in range(10_000)})
        assert 500_000 < len(value) < MAX_BYTES
        return Case(kind, key, value, frozenset({OUTPUT}))
    if kind == "huge_json_too_large":
        return Case(kind, key, doc(ident, words(rng, 400_000)), frozenset({"too_large"}))
    if kind == "tombstone":
        return Case(kind, key, None, frozenset({"null_value"}))
    if kind == "control_chars":  # escaped control characters inside an otherwise normal text
        text = "".join(rng.choice([chr(c) for c in range(32)] + WORDS) for _ in range(20))
        expect = "empty_text" if not text or text.isspace() else OUTPUT
        return Case(kind, key, doc(ident, text), frozenset({expect}))
    if kind == "raw_control_char":  # a raw control byte inside a JSON string is not JSON
        value = doc(ident, "before X after").replace(b"X", bytes([rng.randint(0, 31)]))
        return Case(kind, key, value, frozenset({"invalid_json"}))
    if kind == "whitespace_controls":  # only whitespace-class control characters: empty text
        text = "".join(rng.choice("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \u00a0\u2028") for _ in range(rng.randint(1, 30)))
        return Case(kind, key, doc(ident, text), frozenset({"empty_text"}))
    if kind == "non_string_text":
        not_text: object = rng.choice([42, 3.5, None, True, False, ["a", "list"], {"an": "object"}, [], -1])
        return Case(kind, key, doc(ident, not_text), frozenset({"non_string_text"}))
    if kind == "missing_text":
        return Case(kind, key, orjson.dumps({"id": ident, "body": words(rng, 4)}), frozenset({"missing_text"}))
    if kind == "empty_text":
        return Case(kind, key, doc(ident, rng.choice(["", " ", "\n\t  "])), frozenset({"empty_text"}))
    if kind == "lone_surrogate":
        value = b'{"id":"' + ident.encode() + b'","text":"abc \\ud800 def"}'
        return Case(kind, key, value, frozenset({"invalid_json"}))
    if kind == "odd_id":  # ids of every JSON type, huge, or absent: still embedded
        odd = rng.choice([None, 7, 1.5, ["a", 1], {"nested": {"id": 1}}, "x" * 100_000, "", "🙂\u0000"])
        value = orjson.dumps({"id": odd, "text": words(rng, 5)})
        if rng.random() < 0.3:
            value = orjson.dumps({"text": words(rng, 5)})  # no id at all: falls back to the key
        return Case(kind, key, value, frozenset({OUTPUT}))
    if kind == "odd_key":
        key = rng.choice([None, b"", rng.randbytes(16), b"\xff\xfe", ("k" * 10_000).encode()])
        return Case(kind, key, doc(ident, words(rng, 5)), frozenset({OUTPUT}))
    if kind == "odd_headers":
        headers = [("", b"empty name"), ("binary", rng.randbytes(32)), ("none", None),
                   ("dup", b"1"), ("dup", b"2"), ("ünïcode", "välue".encode())]
        return Case(kind, key, doc(ident, words(rng, 5)), frozenset({OUTPUT}), headers)
    if kind == "nan_number":
        return Case(kind, key, b'{"id":"' + ident.encode() + b'","text":"t","x":NaN}', frozenset({"invalid_json"}))
    # duplicate_key: JSON allows it; the last value wins (here a string, so a normal message)
    return Case(kind, key, b'{"id":"' + ident.encode() + b'","text":5,"text":"last wins"}', frozenset({OUTPUT}))


def ten_mb_text(rng: random.Random, i: int) -> Case:
    """A 10 MB text: accepted by the producer and broker (16 MB), dead-lettered by the worker as too_large."""
    size = 10 * MB + rng.randint(0, 1000)
    letters = string.ascii_lowercase + " "
    chunk = "".join(rng.choice(letters) for _ in range(4096))
    text = (chunk * (size // len(chunk) + 1))[:size]
    return Case("ten_mb_text", f"big{i}".encode(), doc(f"big{i}", text), frozenset({"too_large"}))


@pytest.mark.timeout(pick(420, 1200))
def test_poison_stream_never_crashes_and_reconciles_exactly(bootstrap, worker_env, tmp_path):
    rng = seeded("poison")
    n_good = pick(50_000, 250_000)
    n_bad = pick(2_500, 12_000)
    n_ten_mb = pick(3, 6)
    parts = 3
    names = (unique("in"), unique("out"), unique("dlq"))
    create_topics(bootstrap, [names[0]], parts, {"max.message.bytes": str(16 * MB)})
    create_topics(bootstrap, list(names[1:]), parts)

    # The stream: good messages with bad ones at seeded random places; header pseq = position.
    good_stream = Stream(n_good, keys=97, seed=14, prefix="good-")
    cases: list[Case] = [Case("good", k, v, frozenset({OUTPUT}), h) for k, v, h in good_stream.messages()]
    bad = [poison(rng, i) for i in range(n_bad)] + [ten_mb_text(rng, i) for i in range(n_ten_mb)]
    for c in bad:
        cases.insert(rng.randrange(len(cases) + 1), c)
    for i, c in enumerate(cases):
        c.headers = [*(c.headers or []), ("pseq", str(i).encode())]
    n = len(cases)
    kinds = collections.Counter(c.kind for c in cases)
    note(f"{n} messages: {dict(sorted(kinds.items()))}")

    started = time.monotonic()
    produce(bootstrap, names[0], ((c.key, c.value, c.headers) for c in cases),
            config={"message.max.bytes": 16 * MB + 4096, "compression.type": "none"})
    dead: dict[int, tuple[bytes | None, dict[str, bytes]]] = {}
    outputs: dict[int, bytes] = {}
    wrong_ids: list[tuple[int, object]] = []

    def keep(m, i: int) -> None:
        if m.topic() == names[2]:
            dead[i] = (m.value(), {k: v for k, v in m.headers() or [] if k != "pseq"})
        elif cases[i].kind != "good":
            outputs[i] = m.value()
        elif good_stream.index(orjson.loads(m.value())["id"]) < 0:
            wrong_ids.append((i, orjson.loads(m.value())["id"]))

    tally = Tally(bootstrap, list(names[1:]), n, header_index("pseq"), on_record=keep)
    worker = WorkerProcess(worker_env(*names), tmp_path / "w.log")
    pid = worker.proc.pid
    try:
        complete = tally.until_complete(timeout=pick(240, 900), settle=3, alive=[worker])
        wait_for(lambda: worker.metric("embedstream_messages_consumed_total") == n, 30, "the consumed counter")
        metrics = {name: worker.metric(name) for name in ("embedstream_messages_consumed_total",
                                                          "embedstream_messages_produced_total")}
        alive = worker.proc.poll() is None and worker.proc.pid == pid
        code = worker.stop()
    finally:
        worker.kill()
        tally.close()
    r = reconcile("poison stream", f"{n - n_good} bad of {n} ({len(kinds) - 1} kinds, {n_ten_mb} x 10 MB)",
                  tally, started, outputs_topic=names[1], dlq_topic=names[2])
    assert alive, f"the worker restarted or died:\n{worker.log_tail()}"
    assert code == 0, worker.log_tail()
    assert complete and r.missing == 0 and r.duplicates == 0 and tally.foreign == 0
    assert r.outputs + r.dead_letters == n
    assert not wrong_ids, f"good messages with the wrong output id: {wrong_ids[:3]}"
    assert metrics["embedstream_messages_consumed_total"] == n
    assert metrics["embedstream_messages_produced_total"] == r.outputs

    wrong = []
    reasons: collections.Counter[str] = collections.Counter()
    for i, c in enumerate(cases):
        if i in dead:
            value, headers = dead[i]
            reason = headers.get("error-type", b"").decode()
            reasons[reason] += 1
            if reason not in c.expect:
                wrong.append((i, c.kind, f"dead-lettered as {reason!r}, expected {sorted(c.expect)}"))
                continue
            assert headers.get("error-message"), (i, c.kind)
            assert headers.get("source-topic") == names[0].encode() and "source-offset" in headers, (i, c.kind)
            omitted = headers.get("error-value-omitted")
            if value != c.value:
                assert c.value is not None and value is None and omitted == str(len(c.value)).encode(), \
                    (i, c.kind, "dead letter has neither the original value nor error-value-omitted")
            for name, hv in (c.headers or []):
                if name != "pseq":
                    assert (name, hv) in [(k, v) for k, v in headers.items()] or name == "dup", (i, name)
        elif OUTPUT not in c.expect:
            wrong.append((i, c.kind, f"embedded, expected dead letter {sorted(c.expect)}"))
        elif i in outputs:
            out = orjson.loads(outputs[i])
            assert len(out["embedding"]) == out["dim"], (i, c.kind)
    note(f"dead letters by reason: {dict(sorted(reasons.items()))}")
    assert not wrong, f"{len(wrong)} messages with the wrong outcome, e.g. {wrong[:5]}"
    assert reasons["too_large"] >= n_ten_mb


@pytest.mark.timeout(300)
def test_oversized_key_or_headers_are_dead_lettered_not_fatal(bootstrap, worker_env, tmp_path):
    """An input whose key or headers (not its value) make its output bigger than the worker's producer
    accepts (message.max.bytes = max(2 x EMBED_INPUT__MAX_BYTES, 1 MB) = 2 MB) used to stop the worker with exit
    code 2 on every restart; it must be dead-lettered as too_large (the dead letter keeping at least the
    input's source-* coordinates) while the messages around it are embedded."""
    names = (unique("in"), unique("out"), unique("dlq"))
    create_topics(bootstrap, [names[0]], 1, {"max.message.bytes": str(16 * MB)})
    create_topics(bootstrap, list(names[1:]), 1)
    ok = doc("fine", "a normal text")
    stream = [(b"k0", ok, None), (b"K" * (3 * MB), doc("big-key", "a normal text"), None), (b"k2", ok, None),
              (b"k3", doc("big-header", "a normal text"), [("big", b"H" * (3 * MB))]), (b"k4", ok, None)]
    started = time.monotonic()
    produce(bootstrap, names[0], iter(stream), config={"message.max.bytes": 16 * MB + 4096,
                                                      "compression.type": "none"})
    outcome: dict[int, str] = {}

    def keep(m, i: int) -> None:
        h = dict(m.headers() or [])
        outcome[i] = h.get("error-type", b"").decode() if m.topic() == names[2] else OUTPUT

    tally = Tally(bootstrap, list(names[1:]), len(stream), header_index("source-offset"), on_record=keep)
    worker = WorkerProcess(worker_env(*names), tmp_path / "w.log")
    pid = worker.proc.pid
    try:
        complete = tally.until_complete(timeout=90, settle=2, alive=[worker])
        alive = worker.proc.poll() is None and worker.proc.pid == pid
        code = worker.stop()
    finally:
        worker.kill()
        tally.close()
    r = reconcile("oversized key / headers", "3 MB key, 3 MB header on good values", tally, started,
                  outputs_topic=names[1], dlq_topic=names[2], notes=f"outcomes by offset {outcome}")
    assert alive and code == 0, worker.log_tail()
    assert complete and r.missing == 0 and r.duplicates == 0
    assert outcome == {0: OUTPUT, 1: "too_large", 2: OUTPUT, 3: "too_large", 4: OUTPUT}, outcome
