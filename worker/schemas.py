"""The record of the schema'd outputs (avro, protobuf, the JSON envelope for Kafka Connect) and its schema in each
language: an Avro record, a Protobuf file descriptor, a Kafka Connect struct (JsonConverter's schema JSON).

Fields, in this order: the id (string: a non-string id is written as its JSON text), the vector (float32: Avro
`array<float>`, Protobuf packed `repeated float`; the envelope's `io.debezium.data.DoubleVector` or `FloatVector`),
`model` and `dim` (output.include_model), the constants (output.extra, typed by their value), the payload fields
(output.payload_fields: optional strings, a non-string input value as its JSON text, null when missing), the chunk
fields (with chunking and a payload: document_id, chunk_index, chunk_count, chunk_start, chunk_end; null on an
unchunked record) and the (chunk) text (output.payload_text). The same fields as the sink-ready JSON, flat.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from worker.settings import OutputFormat, OutputSettings, SettingsError

Kind = Literal["string", "int", "long", "double", "boolean", "vector"]
CHUNK_INTS = ("chunk_index", "chunk_count", "chunk_start", "chunk_end")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Column:
    """One field of the record: its name, type, whether it may be null, and its value when it is a constant."""

    name: str
    kind: Kind
    optional: bool = False
    constant: bool = False
    value: Any = None


def as_text(value: Any) -> str | None:
    """A string column's value: strings as they are, anything else as its JSON text; None stays None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # also beyond 64 bits, which orjson does not write
    return orjson.dumps(value).decode()


def _constant(name: str, value: Any) -> Column:
    if isinstance(value, bool):
        return Column(name, "boolean", constant=True, value=value)
    if isinstance(value, int) and _INT64[0] <= value <= _INT64[1]:
        return Column(name, "long", constant=True, value=value)
    if isinstance(value, float):
        return Column(name, "double", constant=True, value=value)
    return Column(name, "string", optional=value is None, constant=True, value=as_text(value))


@dataclass(frozen=True)
class Layout:
    """The record's columns and full name (`namespace.Name`)."""

    columns: tuple[Column, ...]
    record_name: str

    @property
    def id(self) -> Column:
        return self.columns[0]

    @property
    def vector(self) -> Column:
        return self.columns[1]

    @property
    def constants(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.constant)

    @property
    def per_record(self) -> tuple[Column, ...]:
        """The optional columns filled from a record's payload (after the constants)."""
        return tuple(c for c in self.columns[2:] if not c.constant)

    @property
    def namespace(self) -> str:
        return self.record_name.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.record_name.rpartition(".")[2]


def layout(out: OutputSettings, model_name: str, dim: int, chunked: bool,
           record_name: str = "embedstream.Embedding") -> Layout:
    """The record for these output settings. Raises SettingsError on a field name used twice, or one that Avro
    and Protobuf cannot carry (letters, digits and _)."""
    cols = [Column(out.id_field, "string"), Column(out.vector_field, "vector")]
    constants: dict[str, Any] = dict(out.extra)
    if out.include_model:
        constants.update(model=model_name, dim=dim)
    for name, value in constants.items():
        cols.append(Column(name, "int", constant=True, value=dim) if name == "dim" and out.include_model
                    else _constant(name, value))
    wants_payload = bool(out.payload_fields or out.payload_field or out.payload_text)
    cols += [Column(name, "string", optional=True) for name in out.payload_fields]
    if chunked and wants_payload:
        cols.append(Column("document_id", "string", optional=True))
        cols += [Column(name, "int", optional=True) for name in CHUNK_INTS]
    if out.payload_text:
        cols.append(Column("text", "string", optional=True))
    seen: set[str] = set()
    for c in cols:
        if c.name in seen:
            raise SettingsError(f"invalid settings: output field '{c.name}' is named twice (EMBED_OUTPUT__ID_FIELD, "
                                "VECTOR_FIELD, EXTRA, PAYLOAD_FIELDS, PAYLOAD_TEXT and the chunk fields share one "
                                "record)")
        seen.add(c.name)
        if out.format in (OutputFormat.avro, OutputFormat.protobuf) and not _NAME.match(c.name):
            raise SettingsError(f"invalid settings: output field '{c.name}' cannot be an {out.format.value} field "
                                "name (letters, digits and _, not starting with a digit)")
    return Layout(tuple(cols), record_name)


# ---- Avro ----

_AVRO = {"string": "string", "int": "int", "long": "long", "double": "double", "boolean": "boolean"}
# The Debezium types the JDBC sink maps to pgvector (DoubleVector: vector; FloatVector: halfvec, pgvector >= 0.7)
VECTOR_NAMES = {"double": "io.debezium.data.DoubleVector", "float": "io.debezium.data.FloatVector"}


def avro_schema(lay: Layout, vector: Literal["double", "float"] = "double") -> dict[str, Any]:
    """The Avro record. The vector's array carries `connect.name`, the Connect schema name an Avro converter gives
    it (Apicurio's AvroConverter does: tests/sink), so a Kafka Connect sink sees a Debezium vector type."""
    fields: list[dict[str, Any]] = []
    for c in lay.columns:
        if c.kind == "vector":
            fields.append({"name": c.name,
                           "type": {"type": "array", "items": "float", "connect.name": VECTOR_NAMES[vector]}})
        elif c.optional:
            fields.append({"name": c.name, "type": ["null", _AVRO[c.kind]], "default": None})
        else:
            fields.append({"name": c.name, "type": _AVRO[c.kind]})
    schema: dict[str, Any] = {"type": "record", "name": lay.name, "fields": fields}
    if lay.namespace:
        schema["namespace"] = lay.namespace
    return schema


def avro_schema_str(lay: Layout, vector: Literal["double", "float"] = "double") -> str:
    return json.dumps(avro_schema(lay, vector), separators=(",", ":"))


# ---- Protobuf ----

def proto_file(lay: Layout) -> Any:
    """A proto3 FileDescriptorProto with one message: optional columns use explicit presence (`optional`)."""
    from google.protobuf import descriptor_pb2

    fdp = descriptor_pb2.FileDescriptorProto(name=lay.record_name.replace(".", "/") + ".proto", syntax="proto3",
                                             package=lay.namespace)
    msg = fdp.message_type.add(name=lay.name)
    fd = descriptor_pb2.FieldDescriptorProto
    types = {"string": fd.TYPE_STRING, "int": fd.TYPE_INT32, "long": fd.TYPE_INT64, "double": fd.TYPE_DOUBLE,
             "boolean": fd.TYPE_BOOL, "vector": fd.TYPE_FLOAT}
    for number, c in enumerate(lay.columns, start=1):
        f = msg.field.add(name=c.name, number=number, type=types[c.kind],
                          label=fd.LABEL_REPEATED if c.kind == "vector" else fd.LABEL_OPTIONAL)
        if c.optional:
            f.proto3_optional = True
            f.oneof_index = len(msg.oneof_decl)
            msg.oneof_decl.add(name="_" + c.name)
    return fdp


def proto_message_class(lay: Layout) -> Any:
    """The generated message class of `proto_file(lay)`, in a descriptor pool of its own."""
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto_file(lay))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(lay.record_name))


# ---- Kafka Connect (JsonConverter, schemas.enable=true) ----

_CONNECT = {"string": "string", "int": "int32", "long": "int64", "double": "double", "boolean": "boolean"}


def connect_schema(lay: Layout, vector: Literal["double", "float"] = "double") -> dict[str, Any]:
    """JsonConverter's schema of the record: a struct whose vector field is the Debezium vector the JDBC sink maps
    to pgvector (DoubleVector: vector; FloatVector: halfvec)."""
    fields: list[dict[str, Any]] = []
    for c in lay.columns:
        if c.kind == "vector":
            fields.append({"type": "array", "items": {"type": vector, "optional": False}, "optional": False,
                           "name": VECTOR_NAMES[vector], "field": c.name})
        else:
            fields.append({"type": _CONNECT[c.kind], "optional": c.optional, "field": c.name})
    return {"type": "struct", "fields": fields, "optional": False, "name": lay.record_name}
