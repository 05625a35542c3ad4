"""Avro and Protobuf input (EMBED_INPUT__FORMAT=avro|protobuf): records in the Confluent wire format, their writer
schema fetched from the schema registry by id, cached, and the text, id and payload fields read from the record.

The wire format: magic byte 0, the schema id (4 bytes, big-endian), for Protobuf the message indexes (zigzag varints:
a count then the path of the message in the file; the single byte 0 = the file's first message), then the record.
What confluent-kafka's AvroSerializer and ProtobufSerializer write (tests/test_schema_input.py decodes their bytes).

Decoding is done here rather than by confluent-kafka's deserializers: its ProtobufDeserializer parses into a message
class given at construction (the reader's, which an embedding worker does not have), and its AvroDeserializer costs
several times fastavro's reader per message (measured in the tests' benchmark note, docs in the README). The writer
schema is parsed once per id: Avro with fastavro (references resolved as confluent-kafka does), Protobuf into a
descriptor pool of its own (the same helpers as confluent-kafka's ProtobufDeserializer), message classes per index.

Registry answers: a schema per id is fetched once per process (ids are immutable; `SchemaRegistryClient.get_schema`
caches successes too, not failures). 404 for an id: its records are dead letters (`unknown_schema`), and the answer
is kept for NEGATIVE_TTL_S so a burst of them does not become a burst of requests. Anything else (no connection,
timeout, 5xx, 401/403, another status): RegistryUnavailable, which the pipeline answers by holding the batch
(RegistryGate): nothing is dead-lettered or skipped because the registry is down.
"""

from __future__ import annotations

import base64
import datetime
import io
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from worker.codecs import BadInput, Reason
from worker.settings import InputFormat, InputSettings

log = logging.getLogger(__name__)
NEGATIVE_TTL_S = 60.0  # how long a 404 for a schema id is believed before the registry is asked again


class RegistryUnavailable(Exception):
    """The registry could not be asked (connection, timeout, 5xx, credentials refused): retry later, skip nothing."""


@dataclass(frozen=True)
class _Unusable:
    """A schema id whose records cannot be read: unknown to the registry (until `until`), or not this format's."""

    reason: str
    message: str
    until: float = float("inf")


def frame(value: bytes, protobuf: bool) -> tuple[int, tuple[int, ...], int]:
    """(schema id, message indexes, where the record starts) of a Confluent-framed value; BadInput(invalid_framing)."""
    if len(value) < 5:
        raise BadInput(Reason.INVALID_FRAMING, f"value is {len(value)} bytes: too short for the Confluent wire format "
                                               "(magic byte 0 and a 4-byte schema id)")
    if value[0] != 0:
        raise BadInput(Reason.INVALID_FRAMING, f"magic byte is {value[0]}, not 0: not the Confluent wire format")
    schema_id = int.from_bytes(value[1:5], "big")
    if not protobuf:
        return schema_id, (), 5
    pos = 5
    count, pos = _zigzag(value, pos)
    if count == 0:
        return schema_id, (0,), pos
    if count < 0 or count > 100:
        raise BadInput(Reason.INVALID_FRAMING, f"protobuf message index count {count} is out of range")
    indexes = []
    for _ in range(count):
        k, pos = _zigzag(value, pos)
        indexes.append(k)
    return schema_id, tuple(indexes), pos


def _zigzag(value: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(value) or shift > 63:
            raise BadInput(Reason.INVALID_FRAMING, "protobuf message indexes are cut short or malformed")
        b = value[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos


def jsonable(v: Any) -> Any:
    """A decoded Avro value as JSON data (what the outputs write): bytes as Avro's JSON encoding writes them (code
    points 0-255), decimals, UUIDs and times as text; records, maps and arrays recursively."""
    if v is None or isinstance(v, str | int | float | bool):
        return v
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, bytes | bytearray):
        return bytes(v).decode("latin-1")
    if isinstance(v, datetime.date | datetime.time):  # datetime too
        return v.isoformat()
    return str(v)  # decimal.Decimal, uuid.UUID


class SchemaReader:
    """Reads (id, text, kept fields) from registry-framed Avro or Protobuf values; schemas fetched once per id."""

    def __init__(self, fmt: InputFormat, settings: InputSettings, keep_fields: Sequence[str], client: Any,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.protobuf = fmt == InputFormat.protobuf
        self.client = client
        self.id_field = settings.id_field
        self.text_field = settings.text_field
        self.keep_fields = list(keep_fields)
        self.clock = clock
        self.fetches = 0  # registry get_schema calls (tests: one per id)
        self._schemas: dict[int, Any] = {}  # id -> fastavro schema | (protobuf pool, file) | _Unusable
        self._classes: dict[tuple[int, tuple[int, ...]], Any] = {}  # protobuf (id, indexes) -> message class

    # ---- schemas ----

    def prefetch(self, values: Iterable[bytes | None]) -> None:
        """Fetch the schemas of these values not cached yet (and re-ask about 404s older than NEGATIVE_TTL_S), so
        that decoding the batch never calls the registry. Raises RegistryUnavailable (nothing is cached for it)."""
        now = self.clock()
        for value in values:
            if value is None or len(value) < 5 or value[0] != 0:
                continue
            schema_id = int.from_bytes(value[1:5], "big")
            entry = self._schemas.get(schema_id)
            if entry is None or (isinstance(entry, _Unusable) and entry.until <= now):
                self._schemas[schema_id] = self._fetch(schema_id)

    def _schema(self, schema_id: int) -> Any:
        entry = self._schemas.get(schema_id)
        if entry is None:  # not prefetched (a caller decoding on its own): fetch now
            entry = self._schemas[schema_id] = self._fetch(schema_id)
        return entry

    def _fetch(self, schema_id: int) -> Any:
        from confluent_kafka.schema_registry import SchemaRegistryError

        from worker.registry import transport_errors

        self.fetches += 1
        want = "PROTOBUF" if self.protobuf else "AVRO"
        parsing = False  # a 404 while parsing is a missing reference, not an unknown id
        try:
            schema = self.client.get_schema(schema_id)
            kind = (schema.schema_type or "AVRO").upper()
            if kind != want:
                return _Unusable(Reason.INVALID_RECORD, f"schema id {schema_id} is a {kind} schema; "
                                 f"EMBED_INPUT__FORMAT={want.lower()} reads {want} records")
            parsing = True
            return self._parse_protobuf(schema) if self.protobuf else self._parse_avro(schema)
        except SchemaRegistryError as e:
            if e.http_status_code != 404:
                raise RegistryUnavailable(f"HTTP {e.http_status_code}: {e.error_message}"[:300]) from None
            if parsing:
                return _Unusable(Reason.INVALID_RECORD, f"schema id {schema_id}: a reference is missing (HTTP 404: "
                                 f"{e.error_message})"[:500], self.clock() + NEGATIVE_TTL_S)
            return _Unusable(Reason.UNKNOWN_SCHEMA, f"schema id {schema_id} is unknown to the registry "
                             f"(HTTP 404: {e.error_message})"[:500], self.clock() + NEGATIVE_TTL_S)
        except transport_errors() as e:
            raise RegistryUnavailable(f"{type(e).__name__}: {e}"[:300]) from None
        except Exception as e:
            if not parsing:
                raise
            # a schema fastavro or protobuf cannot load
            return _Unusable(Reason.INVALID_RECORD, f"schema id {schema_id} cannot be loaded: "
                             f"{type(e).__name__}: {e}"[:500])

    def _parse_avro(self, schema: Any) -> Any:
        from confluent_kafka.schema_registry._sync.avro import _resolve_named_schema
        from confluent_kafka.schema_registry.common.avro import parse_schema_with_repo

        return parse_schema_with_repo(schema.schema_str, named_schemas=_resolve_named_schema(schema, self.client))

    def _parse_protobuf(self, schema: Any) -> Any:
        from confluent_kafka.schema_registry._sync.protobuf import _resolve_named_schema
        from confluent_kafka.schema_registry.common.protobuf import _init_pool, _str_to_proto
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool()
        _init_pool(pool)
        _resolve_named_schema(schema, self.client, pool)
        fdp = _str_to_proto("default", schema.schema_str)
        pool.Add(fdp)
        return pool, pool.FindFileByName(fdp.name)

    def _message_class(self, schema_id: int, indexes: tuple[int, ...], parsed: Any) -> Any:
        cls = self._classes.get((schema_id, indexes))
        if cls is None:
            from google.protobuf.message_factory import GetMessageClass

            _, fd = parsed
            container, desc = fd.message_types_by_name, None
            for k in indexes:  # the path: a top-level message, then nested ones
                types = list(container.values())
                if not 0 <= k < len(types):
                    raise BadInput(Reason.INVALID_FRAMING, f"protobuf message index {k} is out of range in schema id "
                                                           f"{schema_id} ({len(types)} message(s) there)")
                desc = types[k]
                container = desc.nested_types_by_name
            cls = self._classes[(schema_id, indexes)] = GetMessageClass(desc)
        return cls

    # ---- records ----

    def read(self, value: bytes) -> tuple[Any, str, dict[str, Any]]:
        """(id or None, text, kept fields) of one value; BadInput with the dead-letter reason."""
        schema_id, indexes, start = frame(value, self.protobuf)
        parsed = self._schema(schema_id)
        if isinstance(parsed, _Unusable):
            raise BadInput(parsed.reason, parsed.message)
        if self.protobuf:
            return self._read_protobuf(value, schema_id, indexes, start, parsed)
        return self._read_avro(value, schema_id, parsed)

    def _read_avro(self, value: bytes, schema_id: int, parsed: Any) -> tuple[Any, str, dict[str, Any]]:
        from fastavro import schemaless_reader

        buf = io.BytesIO(value)
        buf.seek(5)
        try:
            rec = schemaless_reader(buf, parsed, None)
        except Exception as e:  # EOF, bad UTF-8, a branch or enum index out of range, ...
            raise BadInput(Reason.INVALID_RECORD, f"does not decode with schema id {schema_id}: "
                                                  f"{type(e).__name__}: {e}"[:500]) from None
        if not isinstance(rec, dict):
            raise BadInput(Reason.INVALID_RECORD, f"schema id {schema_id} is not a record (the value is a "
                                                  f"{type(rec).__name__}): no field '{self.text_field}'")
        if self.text_field not in rec:
            raise BadInput(Reason.MISSING_TEXT, f"record (schema id {schema_id}) has no field '{self.text_field}'")
        text = rec[self.text_field]
        if not isinstance(text, str):
            raise BadInput(Reason.NON_STRING_TEXT,
                           f"field '{self.text_field}' is {type(text).__name__}, not a string")
        doc = {k: jsonable(rec[k]) for k in self.keep_fields if k in rec}
        return self._checked(jsonable(rec.get(self.id_field)), text, doc)

    def _read_protobuf(self, value: bytes, schema_id: int, indexes: tuple[int, ...], start: int,
                       parsed: Any) -> tuple[Any, str, dict[str, Any]]:
        from google.protobuf.descriptor import FieldDescriptor as F

        cls = self._message_class(schema_id, indexes, parsed)
        try:
            msg = cls.FromString(value[start:])
        except Exception as e:  # google.protobuf.message.DecodeError and kin
            raise BadInput(Reason.INVALID_RECORD, f"does not decode with schema id {schema_id} ("
                           f"{cls.DESCRIPTOR.full_name}): {type(e).__name__}: {e}"[:500]) from None
        fields = cls.DESCRIPTOR.fields_by_name
        f = fields.get(self.text_field)
        if f is None:
            raise BadInput(Reason.MISSING_TEXT, f"message {cls.DESCRIPTOR.full_name} (schema id {schema_id}) has no "
                                                f"field '{self.text_field}'")
        if f.type != F.TYPE_STRING or f.is_repeated:
            raise BadInput(Reason.NON_STRING_TEXT, f"field '{self.text_field}' is not a string (protobuf type "
                                                   f"{f.type}{', repeated' if f.is_repeated else ''})")
        if f.has_presence and not msg.HasField(self.text_field):
            raise BadInput(Reason.MISSING_TEXT, f"field '{self.text_field}' is not set")
        text = getattr(msg, self.text_field)
        as_dict: dict[str, Any] | None = None
        out: dict[str, Any] = {}
        for name in [self.id_field, *self.keep_fields]:
            g = fields.get(name)
            if g is None or name in out or (g.has_presence and not g.is_repeated and not msg.HasField(name)):
                continue
            if g.is_repeated or g.type in (F.TYPE_MESSAGE, F.TYPE_GROUP, F.TYPE_BYTES, F.TYPE_ENUM):
                if as_dict is None:
                    from google.protobuf.json_format import MessageToDict

                    as_dict = MessageToDict(msg, preserving_proto_field_name=True)
                out[name] = as_dict.get(name, [] if g.is_repeated else
                                        base64.b64encode(b"").decode() if g.type == F.TYPE_BYTES else None)
            else:
                out[name] = getattr(msg, name)
        ident = out.get(self.id_field)
        if ident == "":  # proto3 cannot tell an unset string from "": the key (or topic-partition-offset) names it
            ident = None
        doc = {k: out[k] for k in self.keep_fields if k in out}
        return self._checked(ident, text, doc)

    def _checked(self, ident: Any, text: str, doc: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
        """What the outputs write must be writable as JSON (orjson: at most 254 levels, 64-bit integers)."""
        try:
            orjson.dumps([ident, doc])
        except orjson.JSONEncodeError as e:
            raise BadInput(Reason.INVALID_RECORD, f"the id or the fields kept for the payload cannot be written as "
                                                  f"JSON ({e})") from None
        return ident, text, doc


class RegistryGate:
    """Admits a batch once the schemas of its records are fetched. While the registry cannot be asked, the pipeline
    holds the batch (its partitions paused, the consumer still polled, so the member stays in the group), `/readyz`
    fails, and the fetch is retried with back-off (1 s doubling to 30 s, as the output's registration at start-up)."""

    def __init__(self, reader: SchemaReader, health: Any, url: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from worker.registry import FIRST_RETRY_S

        self.reader = reader
        self.health = health
        self.url = url
        self.clock = clock
        self.waiting = False
        self.retry_at = 0.0
        self.delay = FIRST_RETRY_S
        self.failures = 0

    def due(self) -> bool:
        """Waiting for the registry, and the time for the next attempt has come."""
        return self.waiting and self.clock() >= self.retry_at

    def admit(self, values: Iterable[bytes | None]) -> bool:
        """True when every schema the values name is fetched (or known to be unusable); False: hold the batch."""
        from worker.registry import FIRST_RETRY_S, MAX_RETRY_S

        try:
            self.reader.prefetch(values)
        except RegistryUnavailable as e:
            self.failures += 1
            self.health.registry_down = str(e)
            log.warning("schema registry unreachable: batch held, consumption paused (not ready until it answers)",
                        extra={"url": self.url, "error": str(e), "retry_in_s": self.delay})
            self.waiting, self.retry_at = True, self.clock() + self.delay
            self.delay = min(self.delay * 2, MAX_RETRY_S)
            return False
        if self.waiting:
            log.info("schema registry answers again: processing the held batch", extra={"url": self.url})
        self.release()
        self.delay = FIRST_RETRY_S
        return True

    def release(self) -> None:
        """Stop waiting (the registry answered, or nothing is held any more)."""
        self.waiting = False
        self.health.registry_down = None


def input_gate(settings: Any, health: Any, client: Any = None) -> RegistryGate | None:
    """The gate (and its reader) of avro/protobuf input, None for json/text. `client`: the registry client to share
    (the output's, when it has one), else one made from EMBED_SCHEMA_REGISTRY__*."""
    if settings.input.format not in (InputFormat.avro, InputFormat.protobuf):
        return None
    from worker import registry

    rs = settings.schema_registry
    client = client if client is not None else registry.make_client(rs)
    reader = SchemaReader(settings.input.format, settings.input, settings.output.payload_fields, client)
    return RegistryGate(reader, health, registry.safe_url(rs.url))
