"""A sample producer: sends texts (a file's lines, or generated sentences) to the input topic."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator

import orjson
from confluent_kafka import KafkaError, Message, Producer

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

    start = time.monotonic()
    n = 0
    for n, text in enumerate(texts, 1):
        ident = f"{id_prefix}-{n}"
        value = orjson.dumps({"id": ident, "text": text}) if fmt == "json" else text.encode()
        while True:
            try:
                producer.produce(topic, key=ident.encode(), value=value, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        if rate > 0:
            ahead = n / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    left = producer.flush(60)
    if failed or left:
        print(f"produce: {len(failed)} failed, {left} not delivered: {failed[:3]}", file=sys.stderr)
        raise SystemExit(1)
    return n
