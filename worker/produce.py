"""A sample producer: sends texts (a file's lines, or generated sentences) to the input topic.

`produce_records` is its send loop, shared with the broker tests (tests/integration/kafkatools.py) so that both
wait out a full local queue and pace their load the same way.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import orjson
from confluent_kafka import KafkaError, Message, Producer

Record = tuple[bytes | None, bytes | None, list[tuple[str, str | bytes | None]] | None]  # (key, value, headers)

_SUBJECTS = ["The stream", "A consumer", "Our worker", "The broker", "Every event", "This sentence", "Le modèle",
             "Der Text", "東京の猫", "A static embedding"]
_VERBS = ["carries", "turns", "averages", "embeds", "publishes", "reads", "compresses", "indexes"]
_OBJECTS = ["text into vectors", "tokens at CPU speed", "messages in order", "a batch of documents",
            "every partition", "the latest offsets", "des phrases en français", "deutsche Wörter", "🙂 emoji"]


def sample_sentences(n: int, seed: int = 0) -> Iterator[str]:
    rng = random.Random(seed)
    for i in range(n):
        yield f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} (#{i})."


def produce_texts(bootstrap: str, topic: str, texts: Iterator[str], *, fmt: str = "json", rate: float = 0.0,
                  id_prefix: str = "msg") -> int:
    """Send each text keyed by its id; `rate` > 0 paces messages per second. Returns the count sent."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    failed: list[str] = []

    def report(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failed.append(err.str())

    def records() -> Iterator[Record]:
        for n, text in enumerate(texts, 1):
            ident = f"{id_prefix}-{n}"
            value = orjson.dumps({"id": ident, "text": text}) if fmt == "json" else text.encode()
            yield ident.encode(), value, None

    n = produce_records(producer, topic, records(), rate=rate, on_delivery=report)
    left = producer.flush(60)
    if failed or left:
        print(f"produce: {len(failed)} failed, {left} not delivered: {failed[:3]}", file=sys.stderr)
        raise SystemExit(1)
    return n


def produce_records(producer: Producer, topic: str, records: Iterable[Record], *, rate: float = 0.0,
                    poll_every: int = 1, on_delivery: Callable[[KafkaError | None, Message], None]) -> int:
    """Send `records` in order, waiting out a full local queue (BufferError); every `poll_every` records serve
    the delivery reports and, when `rate` > 0, sleep to hold `rate` records/s. Returns how many were sent.
    Does not flush: how long to wait for acknowledgements, and what a failure means, is the caller's."""
    start = time.monotonic()
    sent = 0
    for key, value, headers in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        sent += 1
        if sent % poll_every == 0:
            producer.poll(0)
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    return sent
