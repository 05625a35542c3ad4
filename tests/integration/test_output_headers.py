"""Every header the output contract names, on every output, after the produce path was made per batch:
input headers passed through (or none), source coordinates equal to the input's, binary self-description."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from kafkatools import Collector, json_messages, produce, run_to_completion

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fmt", ["f32", "json"])
def test_every_output_carries_its_inputs_coordinates_and_headers(bootstrap, topics, worker_env, small_model,
                                                                 tmp_path, fmt):
    n = 3000
    inp, out, dlq = topics(partitions=3)
    # every third input has no headers of its own (the size check's fast path), the others a trace id
    msgs = [(k, v, h if i % 3 else None) for i, (k, v, h) in enumerate(json_messages(n, keys=40))]
    produce(bootstrap, inp, msgs)
    inputs = Collector(bootstrap, inp).poll_until(n, timeout=60)
    where = {orjson.loads(r.value)["id"]: r for r in inputs}
    collector = Collector(bootstrap, out)
    try:
        records = run_to_completion(worker_env(inp, out, dlq, EMBED_OUTPUT__FORMAT=fmt), tmp_path / "worker.log",
                                    collector, n, 120, 1)
    finally:
        collector.close()
    assert len(records) == n
    seen = set()
    for r in records:
        ident = r.headers["id"].decode() if fmt == "f32" else orjson.loads(r.value)["id"]
        src = where[ident]
        seen.add(ident)
        assert r.key == src.key
        expected = {**src.headers, "source-topic": inp.encode(), "source-partition": str(src.partition).encode(),
                    "source-offset": str(src.offset).encode()}
        if fmt == "f32":
            expected.update({"id": ident.encode(), "model": small_model.name.encode(), "dim": b"32",
                             "dtype": b"float32"})
            assert np.frombuffer(r.value, "<f4").shape == (32,)
        assert r.headers == expected
    assert len(seen) == n
