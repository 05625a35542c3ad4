"""scripts/k8s-test.sh's count: every id sent so far is in the output topic, or the run fails.

    python scripts/k8s_ids.py BOOTSTRAP OUT_TOPIC WHEN PREFIX:COUNT... [--dlq TOPIC:N]
    python scripts/k8s_ids.py --lag BOOTSTRAP GROUP TOPIC     the group's lag on the topic, as the broker has it

Ids are `PREFIX-1 ... PREFIX-COUNT` (`embedstream produce --id-prefix`). Reads the output topic from the start
(read_committed) until every expected id arrived, then 5 s more for late duplicates, or 240 s passed. Prints
one line: records, distinct ids, duplicates (at least once allows them), missing ids, the vectors' dimensions.
Exit 1 when an id is missing, a vector is not 768-D, or a record's key is not its id. Only ids are kept, so a
backlog of hundreds of thousands of vectors is counted in little memory. With --dlq, the dead-letter topic
must hold exactly N records, each with error-type and error-message headers.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable

import orjson
from confluent_kafka import Consumer, Message, TopicPartition

TIMEOUT_S, SETTLE_S = 240.0, 5.0


def read(bootstrap: str, topic: str, each: Callable[[Message], None], done: Callable[[], bool],
         timeout: float = TIMEOUT_S) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"k8s-test-count-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    try:
        deadline, reached = time.time() + timeout, None
        while time.time() < deadline:
            for m in consumer.consume(5000, 0.5):
                if not m.error():
                    each(m)
            if done():
                reached = reached or time.time()
                if time.time() - reached >= SETTLE_S:
                    return
    finally:
        consumer.close()


def lag(bootstrap: str, group: str, topic: str) -> int:
    """Sum over the topic's partitions of end offset minus the group's committed offset (the start offset
    where it has none): what the pods' own lag gauge reports only at its statistics interval."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        total = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            total += high - (tp.offset if tp.offset >= 0 else low)
        return total
    finally:
        consumer.close()


def main(argv: list[str]) -> int:
    if argv[0] == "--lag":
        print(lag(*argv[1:4]))
        return 0
    dlq = None
    if "--dlq" in argv:
        i = argv.index("--dlq")
        dlq, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    bootstrap, topic, when, *batches = argv
    expected: set[str] = set()
    for batch in batches:
        prefix, count = batch.rsplit(":", 1)
        expected |= {f"{prefix}-{n}" for n in range(1, int(count) + 1)}

    seen: Counter[str] = Counter()
    dims: Counter[int] = Counter()
    key_mismatch = []

    def each(m: Message) -> None:
        doc = orjson.loads(m.value())
        seen[doc["id"]] += 1
        dims[len(doc["embedding"])] += 1
        if m.key() != doc["id"].encode():
            key_mismatch.append((m.key(), doc["id"]))

    read(bootstrap, topic, each, lambda: expected <= seen.keys())
    missing = expected - seen.keys()
    records = sum(seen.values())
    print(f"k8s-test: {when}: {records} records, {len(seen)} distinct ids of {len(expected)}, "
          f"{records - len(seen)} duplicates (at least once), {len(missing)} missing, dims {sorted(dims)}",
          file=sys.stderr)
    ok = not missing and set(dims) == {768} and not key_mismatch
    if missing:
        print(f"k8s-test: missing, first 10: {sorted(missing)[:10]}", file=sys.stderr)
    if key_mismatch:
        print(f"k8s-test: {len(key_mismatch)} records whose key is not their id, e.g. {key_mismatch[:3]}",
              file=sys.stderr)
    if dlq:
        dlq_topic, n = dlq.rsplit(":", 1)
        dead: list[dict[str, bytes]] = []
        read(bootstrap, dlq_topic, lambda m: dead.append(dict(m.headers() or [])), lambda: len(dead) >= int(n),
             timeout=60)
        types = sorted({h.get("error-type", b"").decode() for h in dead})
        with_message = sum(1 for h in dead if h.get("error-message"))
        print(f"k8s-test: {when}: {len(dead)} dead letters of {n} expected, error-type {types}, "
              f"{with_message} with error-message", file=sys.stderr)
        ok = ok and len(dead) == int(n) and "" not in types and with_message == len(dead)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
