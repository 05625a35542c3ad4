"""Message codecs: input values -> (id, text) or a dead-letter reason; vectors -> output values.

Input formats: `json` ({"id": ..., "text": ..., ...}; field names configurable) and `text` (the raw
UTF-8 value; id = key); `avro` and `protobuf` records are read by worker.schema_input. Output formats: `json`
({"id", "embedding", "model", "dim"}) and `f32` (raw little-endian float32; id, model and dim in headers); `avro`,
`protobuf` and the JSON schema envelope are written by worker.schema_output. Every dead-letter reason lives here
(Reason, a small fixed set, also the metric label); the rules of the schema'd inputs are in worker.schema_input.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import orjson

from worker.settings import EmptyTextPolicy, InputFormat, InputSettings, OutputSettings

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
    # avro and protobuf input (worker/schema_input.py)
    INVALID_FRAMING = "invalid_framing"  # not the Confluent wire format: too short, magic byte not 0, bad indexes
    UNKNOWN_SCHEMA = "unknown_schema"  # the registry answers 404 for the record's schema id
    INVALID_RECORD = "invalid_record"  # does not decode with its schema (or the schema is not one this format reads)


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
    fields: list[dict[str, Any]] = field(default_factory=list)  # kept input fields, when asked for


def fallback_id(key: bytes | None, topic: str, partition: int, offset: int) -> str:
    """The id of a message that names none: its key, else topic-partition-offset."""
    if key:
        return key.decode("utf-8", "replace")
    return f"{topic}-{partition}-{offset}"


class InputDecoder:
    """Turns raw message values into texts, or says why a message goes to the dead-letter topic."""

    def __init__(self, settings: InputSettings, keep_fields: Sequence[str] = (), schemas: Any = None) -> None:
        self.keep_fields = list(keep_fields)
        self.schemas = schemas  # avro/protobuf input: a worker.schema_input.SchemaReader (registry, cached schemas)
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
                    ident, text, doc = self._decode_json(value)
                except BadInput as e:
                    out.bad.append((i, e.reason, e.message))
                    continue
                if ident is None:
                    ident = fallback_id(keys[i], *where[i])
            elif self.schemas is not None:
                try:
                    ident, text, doc = self.schemas.read(value)
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
                doc = {}
            if self.empty_is_bad and (not text or text.isspace()):
                out.bad.append((i, Reason.EMPTY_TEXT, "text is empty or whitespace only"))
                continue
            out.good.append(i)
            out.ids.append(ident)
            out.texts.append(text)
            if self.keep_fields:
                out.fields.append({k: doc[k] for k in self.keep_fields if k in doc})
        return out

    def _decode_json(self, value: bytes) -> tuple[Any, str, dict[str, Any]]:
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
            ident = self._json_text(ident, f"field '{self.id_field}'")
        elif isinstance(ident, float):
            ident = _exact_id(value, self.id_field, ident)
        if self.keep_fields:
            self._json_text({k: doc[k] for k in self.keep_fields if k in doc}, "the fields kept for the payload")
        return ident, text, doc

    @staticmethod
    def _json_text(value: Any, what: str) -> str:
        """orjson reads 1,024 levels of nesting but writes only 254: what it could not write back would stop
        the worker at the output (TypeError), at every restart (tests/test_fuzz_decoder.py)."""
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError as e:
            raise BadInput(Reason.INVALID_JSON, f"{what} cannot be written back as JSON ({e})") from None


def _exact_id(value: bytes, id_field: str, parsed: float) -> Any:
    """An integer id beyond 64 bits, which orjson reads as a float (2**64 + 1 and 2**64 both as 1.8446744073709552e19,
    so two documents would share an id), kept as its digits; other float ids as they are."""
    try:
        exact = json.loads(value).get(id_field)
    except (ValueError, RecursionError):  # nested too deep for the stdlib parser: the float is all there is
        return parsed
    return str(exact) if isinstance(exact, int) and not isinstance(exact, bool) else parsed


@dataclass
class OutputRecord:
    """One output to publish: which input it comes from, its id, extra headers and payload additions."""

    source: int
    ident: Any
    headers: Headers = field(default_factory=list)
    payload: dict[str, Any] | None = None


def chunk_ident(fmt: str, ident: Any, n: int) -> str:
    """A chunk's id from `chunking.id_format`: {id}, {n}, and {uuid} (UUIDv5 of "id#n", for stores that
    take only UUIDs or integers as point ids, such as Qdrant)."""
    import uuid

    return fmt.format(id=ident, n=n, uuid=uuid.uuid5(uuid.NAMESPACE_URL, f"{ident}#{n}"))


class OutputEncoder:
    """Builds output values and headers from vectors: JSON (field names, payload and constants
    configurable, so a vector store's Kafka sink takes it as it is) or raw binary vectors."""

    def __init__(self, settings: OutputSettings, model_name: str, dim: int, writer: Any = None) -> None:
        self.writer = writer  # avro, protobuf or the JSON envelope (worker.schema_output), when configured
        self.binary = settings.binary_dtype
        self.model_name = model_name
        self.dim = dim
        self.payload_field = settings.payload_field
        self.payload_fields = list(settings.payload_fields)
        self.payload_text = settings.payload_text
        self.wants_payload = bool(self.payload_fields or self.payload_field or self.payload_text)
        self._head = b'{' + orjson.dumps(settings.id_field) + b":"
        self._vec = b"," + orjson.dumps(settings.vector_field) + b":"
        constants: dict[str, Any] = dict(settings.extra)
        if settings.include_model:
            constants.update(model=model_name, dim=dim)
        self._constants = orjson.dumps(constants)[1:-1]  # '"k":v,...' without braces
        self._model_b = model_name.encode()
        self._dim_b = str(dim).encode()

    def values(self, records: Sequence[OutputRecord], vectors: np.ndarray) -> list[bytes]:
        """One output value per record, from the matching row of `vectors` (float32 [n, dim])."""
        if self.writer is not None:
            return cast(list[bytes], self.writer.values(records, vectors))
        if self.binary is not None:
            return self._binary(records, vectors)
        dumps = orjson.dumps
        opt = orjson.OPT_SERIALIZE_NUMPY
        head, vec, consts = self._head, self._vec, self._constants
        sep = b"," if consts else b""
        out = []
        for r, v in zip(records, vectors, strict=True):
            body = head + dumps(r.ident) + vec + dumps(v, option=opt) + sep + consts
            if r.payload is not None:
                if self.payload_field:
                    body += b"," + dumps(self.payload_field) + b":" + dumps(r.payload)
                elif r.payload:
                    body += b"," + dumps(r.payload)[1:-1]
            out.append(body + b"}")
        return out

    def _binary(self, records: Sequence[OutputRecord], vectors: np.ndarray) -> list[bytes]:
        if self.binary == "int8":
            scale = np.abs(vectors).max(axis=1) / 127.0
            scale[scale == 0] = 1.0
            q = np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8)
            for r, sc in zip(records, scale.tolist(), strict=True):
                r.headers.append(("scale", repr(float(np.float32(sc))).encode()))
            block, size = q.tobytes(), self.dim
        elif self.binary == "float16":
            block, size = np.ascontiguousarray(vectors, dtype="<f2").tobytes(), self.dim * 2
        else:
            block, size = np.ascontiguousarray(vectors, dtype="<f4").tobytes(), self.dim * 4
        return [block[i * size:(i + 1) * size] for i in range(len(records))]

    def extra_headers(self, ident: Any) -> Headers:
        """Headers a binary format needs to be self-describing (json carries them in the value)."""
        if self.binary is None:
            return []
        return [("id", str(ident).encode()), ("model", self._model_b), ("dim", self._dim_b),
                ("dtype", self.binary.encode())]


def dequantize(value: bytes, dtype: str, scale: float = 1.0) -> np.ndarray:
    """A binary output value back to float32 (what a consumer does)."""
    if dtype == "int8":
        return np.frombuffer(value, dtype=np.int8).astype(np.float32) * np.float32(scale)
    return np.frombuffer(value, dtype="<f2" if dtype == "float16" else "<f4").astype(np.float32)


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
