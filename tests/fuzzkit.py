"""Shared pieces of the property tests (tests/test_fuzz_*.py): one deterministic hypothesis profile, the text
strategies they draw from, and the worker's Pipeline on fake Kafka clients (one micro-batch, no broker).

`fuzz(n)` is `@settings` with n examples, derandomized (the same examples on every run, so CI cannot flake)
and without the example database (nothing written next to the repo, nothing replayed from a past run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast
from unittest import mock

from confluent_kafka import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import worker.pipeline as pipeline_module
from modelfactory import WORDS, build_model
from worker.encoder import Encoder
from worker.metrics import Metrics
from worker.offsets import PendingBatch
from worker.pipeline import Pipeline
from worker.probes import Health
from worker.settings import Settings


def fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2003", "\u200b", "\x0b", "\x1c", "\u2028"]
ODD = ["東京", "日本語です。", "한국어", "ไทย", "🙂", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "\U00010300\U00010301",
       "\U0002a6d6", "\U000e0041", "\ue000", "e\u0301", "\u0301", "ﬁ", "Ｆｕｌｌ", "①", "ß", "İ", "Σ", "▁", "Ġ", "##",
       "\ufeff", "\ufffd", "\x00", "\x01", "\x7f", "[UNK]", "<unk>", "<s>", "don't", "...", "。", "！", "…", "?!"]

# pieces of text: words of the test corpus, odd characters, any character, whitespace runs, long runs
PIECE = st.one_of(
    st.sampled_from([w for ws in WORDS.values() for w in ws]),
    st.sampled_from(ODD),
    st.sampled_from(SPACES),
    st.text(max_size=8),  # any code point but lone surrogates
    st.text(st.sampled_from("ab東é🙂."), min_size=20, max_size=120),  # a long word / a run without spaces
)
TEXT = st.lists(PIECE, max_size=30).map("".join)


# ---- one micro-batch through Pipeline.process, without a broker ---------------------------------------------


class FakeMessage:
    """What Pipeline.process reads of a consumed confluent_kafka.Message."""

    def __init__(self, value: bytes | None, key: bytes | None = None, partition: int = 0, offset: int = 0,
                 headers: list[tuple[str, bytes]] | None = None, topic: str = "texts") -> None:
        self._v, self._k, self._p, self._o, self._h, self._t = value, key, partition, offset, headers, topic

    def __repr__(self) -> str:
        return (f"FakeMessage({self._v!r:.200}, key={self._k!r:.40}, partition={self._p}, offset={self._o}, "
                f"headers={self._h!r:.100})")

    def error(self) -> None:
        return None

    def value(self) -> bytes | None:
        return self._v

    def key(self) -> bytes | None:
        return self._k

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def headers(self) -> list[tuple[str, bytes]] | None:
        return list(self._h) if self._h is not None else None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


class FakeProducer:
    """Keeps what is produced; acknowledges nothing (the test reads `sent`)."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                headers: list[tuple[str, bytes]] | None = None, on_delivery: Any = None) -> None:
        self.sent.append((topic, key, value, list(headers or [])))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


class FakeConsumer:
    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf


def corrupt_model(folder: Path, kind: str, rows: dict[str, float], dim: int = 8) -> Path:
    """A tests/modelfactory.py model whose table rows of the given words hold one value each (NaN, Inf, ...)."""
    from safetensors.numpy import load_file, save_file

    build_model(folder, kind, dim=dim)
    tensors = load_file(str(folder / "model.safetensors"))
    table = tensors["embeddings"].copy()
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    for word, value in rows.items():
        table[vocab[word]] = value
    tensors["embeddings"] = table
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def offline_pipeline(settings: Settings, encoder: Encoder) -> Pipeline:
    """The worker's Pipeline on fake clients: `process(msgs)` runs decode, encode, format and assemble for real
    and leaves the produced records in `pipeline.producer.sent`."""
    with mock.patch.object(pipeline_module, "Consumer", FakeConsumer), \
            mock.patch.object(pipeline_module, "Producer", FakeProducer):
        return Pipeline(settings, encoder, "test-model", Metrics(CollectorRegistry()), Health(60.0))


Sent = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]


def process(pipe: Pipeline, msgs: list[FakeMessage]) -> tuple[dict[tuple[int, int], list[Sent]], PendingBatch | None]:
    """One batch through `pipe`: what was produced per input (partition, offset), and the batch registered for
    its offsets. Checks that each input is either published (outputs only) or dead-lettered (one record only)."""
    producer = cast(FakeProducer, pipe.producer)
    producer.sent.clear()
    pipe.tracker.pending.clear()
    pipe.process(cast(list[Message], msgs))
    by_input: dict[tuple[int, int], list[Sent]] = {(m.partition(), m.offset()): [] for m in msgs}
    for rec in producer.sent:
        h = dict(rec[3])  # the worker's own source-* headers come after the input's: the last of a name wins
        where = (int(h["source-partition"]), int(h["source-offset"]))
        assert where in by_input, f"a record for an input not in the batch: {where}"
        by_input[where].append(rec)
    for where, recs in by_input.items():
        topics = {r[0] for r in recs}
        assert recs, f"input {where} was neither published nor dead-lettered"
        assert topics == {pipe.s.output_topic} or (topics == {pipe.s.dlq_topic} and len(recs) == 1), \
            f"input {where}: {[(r[0], dict(r[3]).get('error-type')) for r in recs]}"
    return by_input, (pipe.tracker.pending[-1] if pipe.tracker.pending else None)


def dead_letter_reason(recs: list[Sent]) -> str | None:
    """The error-type of an input's dead letter, None when it was published."""
    return dict(recs[0][3])["error-type"].decode() if len(recs) == 1 and recs[0][0].endswith("dlq") else None
