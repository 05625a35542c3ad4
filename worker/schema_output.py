"""Output values with a schema: Avro and Protobuf in the Confluent wire format, and the JSON envelope
(`{"schema", "payload"}`) of Kafka Connect's JsonConverter. The record and its schemas: worker/schemas.py.

The per-message path frames the bytes itself: the constant fields are encoded once, the vector is one
`tobytes()` of the batch's float32 rows, so a message costs about what an `f32` value does. The bytes are
those of confluent-kafka's `AvroSerializer` and `ProtobufSerializer` for the same record, with the same schema
id (tests/test_schema_output.py checks them byte for byte and decodes them with its deserializers):

- Avro: magic byte 0, the schema id (4 bytes, big-endian), then the Avro binary record (strings and ints
  zigzag-varint framed, the array as one block of `dim` little-endian floats and a 0 end, unions by branch).
- Protobuf: magic byte 0, the schema id, the message indexes (`0` for the file's first message), then the
  proto3 message in field-number order: the vector packed, the optional (explicit presence) fields when set.
"""

from __future__ import annotations

import base64
import logging
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson

from worker.schemas import Column, Layout, as_text, avro_schema_str, connect_schema, layout, proto_message_class
from worker.settings import OutputFormat, Settings

if TYPE_CHECKING:
    from worker.codecs import OutputRecord

log = logging.getLogger(__name__)


def varint(n: int) -> bytes:
    """Unsigned LEB128 (protobuf varint); a negative int64 as its 64-bit two's complement."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def zigzag(n: int) -> bytes:
    """Avro int/long: zigzag, then varint."""
    return varint((n << 1) ^ (n >> 63))


def _avro_str(s: str) -> bytes:
    b = s.encode()
    return zigzag(len(b)) + b


def _avro_value(c: Column, v: Any) -> bytes:
    """One non-vector field's Avro encoding (optional: the union's branch first)."""
    if c.optional:
        if v is None:
            return b"\x00"
        return b"\x02" + _avro_value(Column(c.name, c.kind), v)
    if c.kind == "string":
        return _avro_str(v)
    if c.kind in ("int", "long"):
        return zigzag(int(v))
    if c.kind == "double":
        return struct.pack("<d", v)
    return b"\x01" if v else b"\x00"


def _payload_value(c: Column, payload: dict[str, Any] | None) -> Any:
    if payload is None:
        return None
    v = payload.get(c.name)
    return v if c.kind == "int" or v is None else as_text(v)


def _rows(vectors: np.ndarray) -> tuple[bytes, int]:
    block = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    return block, vectors.shape[1] * 4


class AvroWriter:
    def __init__(self, lay: Layout, schema_id: int) -> None:
        self.lay = lay
        self.prefix = b"\x00" + schema_id.to_bytes(4, "big")
        self.consts = b"".join(_avro_value(c, c.value) for c in lay.constants)
        self.per_record = lay.per_record

    def values(self, records: Sequence[OutputRecord], vectors: np.ndarray) -> list[bytes]:
        block, size = _rows(vectors)
        dim = vectors.shape[1]
        head = zigzag(dim) if dim else b""
        tail = b"\x00" + self.consts
        prefix, cols = self.prefix, self.per_record
        out = []
        for k, r in enumerate(records):
            parts = [prefix, _avro_str(as_text(r.ident) or ""), head, block[k * size:(k + 1) * size], tail]
            parts += [_avro_value(c, _payload_value(c, r.payload)) for c in cols]
            out.append(b"".join(parts))
        return out


class ProtobufWriter:
    def __init__(self, lay: Layout, schema_id: int) -> None:
        self.lay = lay
        self.prefix = b"\x00" + schema_id.to_bytes(4, "big") + b"\x00"  # message indexes [0]: one 0 byte
        self.message_class = cls = proto_message_class(lay)
        # the constants as protobuf itself writes them (proto3: zero values of non-optional fields left out)
        self.consts = cls(**{c.name: c.value for c in lay.constants if c.value is not None}).SerializeToString()
        numbers = {c.name: n for n, c in enumerate(lay.columns, start=1)}
        self.id_tag = varint(numbers[lay.id.name] << 3 | 2)
        self.vec_tag = varint(numbers[lay.vector.name] << 3 | 2)
        self.per_record = [(c, varint(numbers[c.name] << 3 | (0 if c.kind == "int" else 2)))
                           for c in lay.per_record]

    def values(self, records: Sequence[OutputRecord], vectors: np.ndarray) -> list[bytes]:
        block, size = _rows(vectors)
        vec_head = self.vec_tag + varint(size) if size else b""
        prefix, consts, cols = self.prefix, self.consts, self.per_record
        out = []
        for k, r in enumerate(records):
            ident = (as_text(r.ident) or "").encode()
            parts = [prefix]
            if ident:
                parts += [self.id_tag, varint(len(ident)), ident]
            if size:
                parts += [vec_head, block[k * size:(k + 1) * size]]
            parts.append(consts)
            for c, tag in cols:
                v = _payload_value(c, r.payload)
                if v is None:
                    continue
                if c.kind == "int":
                    parts += [tag, varint(int(v))]
                else:
                    b = v.encode()
                    parts += [tag, varint(len(b)), b]
            out.append(b"".join(parts))
        return out


class EnvelopeWriter:
    """JSON `{"schema": <Connect struct>, "payload": {...}}`: every field present (null when unset)."""

    def __init__(self, lay: Layout, vector: str) -> None:
        self.lay = lay
        self.schema = connect_schema(lay, "float" if vector == "float" else "double")
        self.head = b'{"schema":' + orjson.dumps(self.schema) + b',"payload":{' + orjson.dumps(lay.id.name) + b":"
        self.vec = b"," + orjson.dumps(lay.vector.name) + b":"
        self.consts = b"".join(b"," + orjson.dumps(c.name) + b":" + orjson.dumps(c.value) for c in lay.constants)
        self.per_record = [(c, b"," + orjson.dumps(c.name) + b":") for c in lay.per_record]

    def values(self, records: Sequence[OutputRecord], vectors: np.ndarray) -> list[bytes]:
        dumps, opt = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
        out = []
        for r, v in zip(records, vectors, strict=True):
            parts = [self.head, dumps(as_text(r.ident)), self.vec, dumps(v, option=opt), self.consts]
            for c, name in self.per_record:
                parts += [name, dumps(_payload_value(c, r.payload))]
            parts.append(b"}}")
            out.append(b"".join(parts))
        return out


Writer = AvroWriter | ProtobufWriter | EnvelopeWriter


def registry_schema(fmt: OutputFormat, lay: Layout, vector: Literal["double", "float"] = "double") -> Any:
    """The confluent-kafka `Schema` the serializers register: Avro's JSON; Protobuf's file descriptor, base64."""
    from confluent_kafka.schema_registry import Schema

    if fmt == OutputFormat.avro:
        return Schema(avro_schema_str(lay, vector), "AVRO")
    cls = proto_message_class(lay)
    return Schema(base64.standard_b64encode(cls.DESCRIPTOR.file.serialized_pb).decode("ascii"), "PROTOBUF")


def make_writer(settings: Settings, model_name: str, dim: int, client: Any = None) -> tuple[Writer, Any]:
    """The writer of the configured schema'd format (registering its schema), and the registry client (None for
    the envelope). `client`: a registry client to use instead of one made from the settings (tests)."""
    from worker import registry

    out = settings.output
    lay = layout(out, model_name, dim, settings.chunking.mode != "off", settings.schema_registry.record_name)
    if out.format not in (OutputFormat.avro, OutputFormat.protobuf):
        return EnvelopeWriter(lay, out.envelope_vector), None
    rs = settings.schema_registry
    client = client if client is not None else registry.make_client(rs)
    subject = registry.subject_name(rs, settings.output_topic)
    schema_id = registry.register(client, rs, subject, registry_schema(out.format, lay, out.envelope_vector))
    log.info("output schema", extra={"format": out.format.value, "subject": subject,
                                                             "schema_id": schema_id, "url": registry.safe_url(rs.url)})
    writer: Writer = AvroWriter(lay, schema_id) if out.format == OutputFormat.avro else ProtobufWriter(lay, schema_id)
    return writer, client
