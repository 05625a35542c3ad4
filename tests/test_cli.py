"""The command line as a user meets it: encode a file with no broker, readable errors, run --help."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import orjson

from worker.encoder import Encoder
from worker.model import load_model


def cli(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None):
    import os

    return subprocess.run([sys.executable, "-m", "worker", *args], input=stdin, capture_output=True,
                          env={**os.environ, "EMBED_LOG__LEVEL": "WARNING", **(env or {})}, timeout=120)


def test_encode_json_lines_and_plain_text_from_stdin(small_model):
    lines = [b'{"id": "a", "text": "the quick brown fox"}', b"plain text line", b"", b'{"id": 7, "text": "kafka"}']
    r = cli("encode", "--model", str(small_model), stdin=b"\n".join(lines) + b"\n")
    assert r.returncode == 0, r.stderr
    docs = [orjson.loads(x) for x in r.stdout.splitlines()]
    assert [d["id"] for d in docs] == ["a", 1, 7]  # plain lines: their record number
    expected = Encoder(load_model(small_model)).encode(["the quick brown fox", "plain text line", "kafka"])
    np.testing.assert_allclose(np.array([d["embedding"] for d in docs], np.float32), expected, atol=1e-6)


def test_encode_file_to_npy(small_model, tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text("one\ntwo three\n東京\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    r = cli("encode", "--model", str(small_model), "-i", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    v = np.load(out)
    assert v.shape == (3, 32) and v.dtype == np.float32


def test_encode_errors_are_one_readable_line(small_model, tmp_path):
    r = cli("encode", "--model", str(tmp_path / "missing"))
    assert r.returncode == 2 and b"model folder not found" in r.stderr and b"Traceback" not in r.stderr
    assert len(r.stderr.decode().strip().splitlines()) == 1
    r = cli("encode", "--model", str(small_model), stdin=b'{"id": 1, "body": "no text"}\n')
    assert r.returncode == 1 and b"line 1: JSON object has no string field 'text'" in r.stderr


def test_run_help_lists_every_setting_and_bad_settings_name_the_variable(small_model):
    r = cli("run", "--help")
    assert r.returncode == 0
    for var in (b"EMBED_KAFKA__BOOTSTRAP_SERVERS", b"EMBED_INPUT_TOPIC", b"EMBED_MODEL__PATH", b"EMBED_METRICS__PORT",
                b"EMBED_OUTPUT__FORMAT", b"EMBED_CHUNKING__MODE", b"EMBED_PROCESSING_GUARANTEE"):
        assert var in r.stdout
    r = cli("run", env={"EMBED_BATCH__MAX_MESSAGES": "lots", "EMBED_MODEL__PATH": str(small_model)})
    assert r.returncode == 2
    assert r.stderr.decode().strip().splitlines()[-1].startswith("embedstream run: invalid settings: "
                                                                  "EMBED_BATCH__MAX_MESSAGES")
    r = cli("run", env={"EMBED_MODEL__PATH": str(small_model), "EMBED_MODEL__EXPECTED_DIM": "768",
                        "EMBED_METRICS__PORT": "0"})
    assert r.returncode == 2 and b"output dimension is 32 but EMBED_MODEL__EXPECTED_DIM is 768" in r.stderr
