"""Message codecs: input values -> (id, text) or a dead-letter reason; vectors -> output values.

Input formats: `json` ({"id": ..., "text": ..., ...}; field names configurable) and `text` (the raw
UTF-8 value; id = key). Output formats: `json` ({"id", "embedding", "model", "dim"}) and `f32` (raw
little-endian float32; id, model and dim in headers). Every rule that sends a message to the
dead-letter topic lives here, with its reason from a small fixed set (also the metric label).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from worker.settings import EmptyTextPolicy, InputFormat, InputSettings, OutputFormat

Headers = list[tuple[str, bytes]]


class Reason:
    """Dead-letter reasons (the `error-type` header and the metric's `reason` label)."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    MISSING_TEXT = "missing_text"
    NON_STRING_TEXT = "non_string_text"
    NULL_VALUE = "null_value"
    EMPTY_TEXT = "empty_text"
    TOO_LARGE = "too_large"
    ENCODE_ERROR = "encode_error"


class BadInput(Exception):
    """A message that cannot be embedded: `reason` (from Reason) and a human-readable message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass
class Decoded:
    """One micro-batch, split: `good` are indexes into the batch with their ids and texts; `bad` are
    (index, reason, message) for the dead-letter topic."""

    good: list[int] = field(default_factory=list)
    ids: list[Any] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    bad: list[tuple[int, str, str]] = field(default_factory=list)


def fallback_id(key: bytes | None, topic: str, partition: int, offset: int) -> str:
    """The id of a message that names none: its key, else topic-partition-offset."""
    if key:
        return key.decode("utf-8", "replace")
    return f"{topic}-{partition}-{offset}"


class InputDecoder:
    """Turns raw message values into texts, or says why a message goes to the dead-letter topic."""

    def __init__(self, settings: InputSettings) -> None:
        self.format = settings.format
        self.id_field = settings.id_field
        self.text_field = settings.text_field
        self.max_bytes = settings.max_bytes
        self.empty_is_bad = settings.empty_text == EmptyTextPolicy.dead_letter

    def decode(self, values: Sequence[bytes | None], keys: Sequence[bytes | None],
               where: Sequence[tuple[str, int, int]]) -> Decoded:
        """Decode a batch; `where` is (topic, partition, offset) per message, for fallback ids."""
        out = Decoded()
        is_json = self.format == InputFormat.json
        for i, value in enumerate(values):
            if value is None:
                out.bad.append((i, Reason.NULL_VALUE, "message value is null (tombstone)"))
                continue
            if len(value) > self.max_bytes:
                out.bad.append((i, Reason.TOO_LARGE, f"value is {len(value)} bytes; limit is {self.max_bytes}"))
                continue
            if is_json:
                try:
                    ident, text = self._decode_json(value)
                except BadInput as e:
                    out.bad.append((i, e.reason, e.message))
                    continue
                if ident is None:
                    ident = fallback_id(keys[i], *where[i])
            else:
                try:
                    text = value.decode("utf-8")
                except UnicodeDecodeError as e:
                    out.bad.append((i, Reason.INVALID_UTF8, f"{e.reason} at byte {e.start}"))
                    continue
                ident = fallback_id(keys[i], *where[i])
            if self.empty_is_bad and (not text or text.isspace()):
                out.bad.append((i, Reason.EMPTY_TEXT, "text is empty or whitespace only"))
                continue
            out.good.append(i)
            out.ids.append(ident)
            out.texts.append(text)
        return out

    def _decode_json(self, value: bytes) -> tuple[Any, str]:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as e:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as u:
                raise BadInput(Reason.INVALID_UTF8, f"{u.reason} at byte {u.start}") from None
            raise BadInput(Reason.INVALID_JSON, str(e)[:200]) from None
        if not isinstance(doc, dict):
            raise BadInput(Reason.INVALID_JSON, f"expected a JSON object, found {type(doc).__name__}")
        if self.text_field not in doc:
            raise BadInput(Reason.MISSING_TEXT, f"JSON object has no field '{self.text_field}'")
        text = doc[self.text_field]
        if not isinstance(text, str):
            raise BadInput(Reason.NON_STRING_TEXT, f"field '{self.text_field}' is {type(text).__name__}, not a string")
        ident = doc.get(self.id_field)
        if isinstance(ident, dict | list):
            ident = orjson.dumps(ident).decode()
        return ident, text


class OutputEncoder:
    """Builds output message values and headers from vectors."""

    def __init__(self, fmt: OutputFormat, model_name: str, dim: int) -> None:
        self.format = fmt
        self.model_name = model_name
        self.dim = dim
        self._model_b = model_name.encode()
        self._dim_b = str(dim).encode()
        self._tail = b',"model":' + orjson.dumps(model_name) + b',"dim":' + self._dim_b + b"}"

    def values(self, ids: Sequence[Any], vectors: np.ndarray) -> list[bytes]:
        """One output value per row of `vectors` (float32 [n, dim])."""
        if self.format == OutputFormat.f32:
            block = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
            size = self.dim * 4
            return [block[i * size:(i + 1) * size] for i in range(len(ids))]
        dumps = orjson.dumps
        opt = orjson.OPT_SERIALIZE_NUMPY
        tail = self._tail
        return [b'{"id":' + dumps(i) + b',"embedding":' + dumps(v, option=opt) + tail
                for i, v in zip(ids, vectors, strict=True)]

    def extra_headers(self, ident: Any) -> Headers:
        """Headers the f32 format needs to be self-describing (json carries them in the value)."""
        if self.format != OutputFormat.f32:
            return []
        return [("id", str(ident).encode()), ("model", self._model_b), ("dim", self._dim_b)]


def source_headers(topic: str, partition: int, offset: int) -> Headers:
    return [("source-topic", topic.encode()), ("source-partition", str(partition).encode()),
            ("source-offset", str(offset).encode())]


def dead_letter(value: bytes | None, reason: str, message: str, topic: str, partition: int, offset: int,
                max_value_bytes: int) -> tuple[bytes | None, Headers]:
    """The value and extra headers of a dead-letter record. A value too big for the dead-letter topic is
    left out (the record still names its source topic, partition and offset) instead of failing delivery."""
    headers = [("error-type", reason.encode()), ("error-message", message.encode("utf-8", "replace")[:1000]),
               *source_headers(topic, partition, offset)]
    if value is not None and len(value) > max_value_bytes:
        headers.append(("error-value-omitted", str(len(value)).encode()))
        value = None
    return value, headers
