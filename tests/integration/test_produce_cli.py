"""`embedstream produce`: the sample producer users (and scripts/k8s-test.sh) send texts with; its ids are
what they count the output by."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from kafkatools import Collector

pytestmark = pytest.mark.integration


def test_produce_sends_count_texts_with_prefixed_ids(bootstrap, topics):
    inp, _, _ = topics(partitions=2)
    proc = subprocess.run([sys.executable, "-m", "worker", "produce", "--bootstrap", bootstrap, "--topic", inp,
                           "--count", "25", "--id-prefix", "batch7", "--seed", "3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"produced 25 messages to {inp}" in proc.stderr
    collector = Collector(bootstrap, inp)
    try:
        records = collector.poll_until(25, timeout=60, settle=1)
    finally:
        collector.close()
    docs = [orjson.loads(r.value) for r in records]
    assert sorted(d["id"] for d in docs) == sorted(f"batch7-{i}" for i in range(1, 26))
    assert all(r.key == orjson.loads(r.value)["id"].encode() for r in records)
    assert all(isinstance(d["text"], str) and d["text"] for d in docs)
