"""Encode a file of texts without a broker: JSON lines or plain text in, JSON lines or .npy out.

The embedded way to try a model: `python -m worker encode --model DIR < texts.txt`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import IO, Any

import numpy as np
import orjson

from worker.encoder import Encoder


class InputLineError(ValueError):
    """A JSON input line without a usable text; names the line."""


def read_records(lines: Iterable[bytes], text_field: str = "text", id_field: str = "id") -> Iterator[tuple[Any, str]]:
    """(id, text) per non-empty line. A line that is a JSON object is read as {id, text}; any other
    line is the text itself, with its 0-based record number as id."""
    n = 0
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        if line.lstrip().startswith(b"{"):
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict):
                text = doc.get(text_field)
                if not isinstance(text, str):
                    raise InputLineError(f"line {lineno}: JSON object has no string field '{text_field}'")
                yield doc.get(id_field, n), text
                n += 1
                continue
        try:
            yield n, line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputLineError(f"line {lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        n += 1


def encode_stream(
    encoder: Encoder,
    source: IO[bytes],
    sink: IO[bytes],
    *,
    batch_size: int = 2048,
    npy_path: str | None = None,
    text_field: str = "text",
    id_field: str = "id",
) -> int:
    """Encode every record of `source`; write JSON lines to `sink`, or one .npy file. Returns the count."""
    records = read_records(source, text_field, id_field)
    chunks: list[np.ndarray] = []
    total = 0
    while True:
        batch = list(islice(records, batch_size))
        if not batch:
            break
        ids, texts = zip(*batch, strict=True)
        vectors = encoder.encode(texts)
        total += len(batch)
        if npy_path:
            chunks.append(vectors)
            continue
        sink.write(b"".join(
            orjson.dumps({"id": i, "embedding": v}, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)
            for i, v in zip(ids, vectors, strict=True)
        ))
    if npy_path:
        out = np.vstack(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)
        np.save(npy_path, out)
    sink.flush()
    return total


def open_input(path: str) -> IO[bytes]:
    return sys.stdin.buffer if path == "-" else open(path, "rb")
