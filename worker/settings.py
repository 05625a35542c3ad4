"""Typed configuration: one place for every default, every validation rule and every secret.

Settings come from `EMBED_`-prefixed environment variables with `__` for nesting
(`EMBED_KAFKA__BOOTSTRAP_SERVERS`, `EMBED_BATCH__MAX_MESSAGES`, ...). Any librdkafka property passes
through `EMBED_KAFKA__CONFIG` (a JSON object) or one variable per property, where `_` stands for `.`
(`EMBED_KAFKA__CONFIG__SASL_PASSWORD` -> `sasl.password`). Pass-through values are `SecretStr`, so a
settings object never prints a password.
"""

from __future__ import annotations

import json
from enum import Enum, StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError as SourceError

from worker.registry_settings import SchemaRegistrySettings

DEFAULT_MODEL = "tss-deposium/gemma-deposium-768d"
SENSITIVE_MARKERS = ("password", "secret", "key", "token", "credential", "jaas")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


class InputFormat(StrEnum):
    json = "json"
    text = "text"
    avro = "avro"  # Confluent wire format, writer schema fetched from the registry by id (worker/schema_input.py)
    protobuf = "protobuf"


class OutputFormat(StrEnum):
    json = "json"
    f32 = "f32"  # binary float32 (same as binary with dtype float32)
    binary = "binary"
    avro = "avro"  # Confluent wire format, schema in the registry (worker/schemas.py)
    protobuf = "protobuf"


SCHEMA_FORMATS = (OutputFormat.avro, OutputFormat.protobuf)


class EmptyTextPolicy(StrEnum):
    dead_letter = "dead_letter"
    zero_vector = "zero_vector"


class ProcessingGuarantee(StrEnum):
    at_least_once = "at_least_once"
    exactly_once = "exactly_once"


def is_sensitive(key: str) -> bool:
    """True for librdkafka properties whose values must never be logged (passwords, keys, tokens)."""
    k = key.lower()
    return any(m in k for m in SENSITIVE_MARKERS)


class KafkaSettings(BaseModel):
    """Connection and group settings shared by the consumer and producer."""

    bootstrap_servers: str = Field("localhost:9092", description="Comma-separated host:port list.")
    group_id: str = Field("embedstream", description="Consumer group; every worker process joins it.")
    group_instance_id: str | None = Field(
        None, description="Static membership id (group.instance.id); set per pod, e.g. from its name."
    )
    transactional_id: str | None = Field(
        None, description="exactly_once: the producer's transactional.id (default: group, instance or host, "
        "process index); must be stable per process and unique in the group."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new group starts: earliest embeds every text already in the topic."
    )
    commit_interval_ms: int = Field(
        1000, ge=0, description="Commit acknowledged offsets at most this often (async); 0 = after every batch."
    )
    max_uncommitted_messages: int = Field(
        20000, ge=0, description="at_least_once: acknowledged inputs that may await a successful commit; at half "
        "of it a commit is sent early, at all of it consumption pauses until one is confirmed. Bounds what a "
        "rebalance or crash re-reads (this plus the batches in flight), also while commits fail. 0 = no bound."
    )
    session_timeout_ms: int = Field(45000, ge=1000)
    heartbeat_interval_ms: int = Field(
        1000, ge=100, description="How often a member heartbeats, and so how late it learns of a rebalance: a "
        "worker that joins (a new replica, a restart) waits up to this for the others to give up partitions."
    )
    client_id: str = Field("embedstream", description="client.id prefix seen in broker logs.")
    config: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra librdkafka properties for both clients (JSON object, or one variable per "
        "property with _ for .): security.protocol, sasl.*, ssl.*, ...",
    )
    consumer_config: dict[str, SecretStr] = Field(default_factory=dict, description="Consumer-only extras.")
    producer_config: dict[str, SecretStr] = Field(default_factory=dict, description="Producer-only extras.")

    @field_validator("config", "consumer_config", "producer_config", mode="before")
    @classmethod
    def _librdkafka_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object of librdkafka properties")
        out: dict[str, SecretStr | str] = {}
        for k, v in value.items():
            key = str(k).lower()
            if "." not in key:
                key = key.replace("_", ".")
            out[key] = v if isinstance(v, SecretStr) else str(v).lower() if isinstance(v, bool) else str(v)
        return out

    def extra(self, which: Literal["consumer", "producer"]) -> dict[str, str]:
        """The pass-through librdkafka properties for one client, secrets unwrapped."""
        own = self.consumer_config if which == "consumer" else self.producer_config
        merged = {**self.config, **own}
        return {k: v.get_secret_value() for k, v in merged.items()}


class ModelSettings(BaseModel):
    """Which Model2Vec model to load and how to encode with it."""

    path: str | None = Field(None, description="Local Model2Vec folder; takes precedence over name.")
    name: str = Field(DEFAULT_MODEL, description="Hub id, resolved through huggingface_hub when no path is set.")
    expected_dim: int | None = Field(
        None, ge=1, description="Stop start-up unless the model has this dimension (the chart sets 768)."
    )
    max_length: int | None = Field(512, ge=1, description="Truncate texts to this many tokens; null = no limit.")
    dimensions: int | None = Field(
        None, ge=1, description="Keep the first N (PCA-ordered) dimensions of the table; unset = all."
    )
    normalize: bool | None = Field(None, description="Override the model config's normalize.")
    fast_path: Literal["auto", "on", "off"] = Field(
        "auto", description="Piece-cache fast path: auto = on where it reproduces the exact path at load."
    )
    fast_path_cache_mb: int = Field(256, ge=1, description="Memory bound of the fast-path piece cache.")
    tokenizer: Literal["auto", "tokenizers", "gigatoken", "tokie"] = Field(
        "auto", description="Tokenizer library: auto = gigatoken where it gives tokenizers' ids on the self-check "
        "corpus at load (pip install embedstream[fast]), else tokenizers (the reference)."
    )
    fast_path_check_file: str | None = Field(
        None, description="Extra self-check corpus (one text per line) the fast path must reproduce exactly."
    )
    prepared: bool = Field(
        True, description="Reuse a stored verdict of the load-time tokenizer check (embedstream model prepare, or "
        "the previous start's) made for exactly this tokenizer file, library versions and settings: the reference "
        "tokenizer is then not loaded. false = check at every start."
    )
    prepared_dir: str | None = Field(
        None, description="Where verdicts are stored when the model folder holds none or is read-only "
        "(default ~/.cache/embedstream/prepared)."
    )
    pooling: Literal["auto", "compiled", "sparse"] = Field(
        "auto", description="Summing token rows: auto = a compiled kernel (numba, pip install embedstream[fast]), "
        "compiled on a background thread after start-up, scipy's sparse product until then or without numba; "
        "compiled = compile before ready (fails without numba); sparse = scipy only. Same vectors, bit for bit."
    )

    @field_validator("max_length", "expected_dim", "dimensions", mode="before")
    @classmethod
    def _none_words(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"", "none", "null"}:
            return None
        return value


class InputSettings(BaseModel):
    """How an input message is read."""

    format: InputFormat = Field(InputFormat.json, description="json: {id, text, ...}; text: raw UTF-8, id = key; "
                                "avro or protobuf: Confluent wire format, schemas from EMBED_SCHEMA_REGISTRY__URL.")
    id_field: str = Field("id", description="Field holding the id (json, avro, protobuf).")
    text_field: str = Field("text", description="Field holding the text (json, avro, protobuf).")
    max_bytes: int = Field(1_000_000, ge=1, description="Messages larger than this go to the dead-letter topic.")
    dead_letter_max_value_bytes: int = Field(
        900_000, ge=0, description="A dead letter carries the original value only up to this size (brokers "
        "reject records over ~1 MB by default); larger ones go with a null value and error-value-omitted."
    )
    empty_text: EmptyTextPolicy = Field(
        EmptyTextPolicy.dead_letter, description="Empty/whitespace-only text: dead_letter or zero_vector."
    )


class OutputSettings(BaseModel):
    """How an output message is written."""

    format: OutputFormat = Field(
        OutputFormat.json, description="json; f32 (raw little-endian float32); binary (raw, in output.dtype); "
        "avro or protobuf (Confluent wire format, schema in EMBED_SCHEMA_REGISTRY__URL)."
    )
    dtype: Literal["float32", "float16", "int8"] = Field(
        "float32", description="binary format: element type; int8 carries a per-vector scale header."
    )
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "none", description="Producer compression. none by default: shortest-form JSON vectors and float32 "
        "are near-random digits and bits, so lz4 and snappy save under 10% of the bytes for CPU that costs more "
        "than the encoder; zstd halves JSON at about twice that CPU (docs/benchmarks.md)."
    )
    id_field: str = Field("id", min_length=1, description="json: name of the id field.")
    vector_field: str = Field("embedding", min_length=1, description="json: name of the vector field.")
    include_model: bool = Field(True, description="json: add the model and dim fields.")
    payload_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="json: input fields copied into the output (JSON list of names)."
    )
    payload_field: str | None = Field(
        None, description="json: nest the copied fields (and chunk info) under this field; unset = top level."
    )
    payload_text: bool = Field(False, description="json: copy the (chunk) text into the payload as 'text'.")
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description='json: constant fields added to every output, e.g. {"collection_name": "docs"}.',
    )
    schema_envelope: bool = Field(
        False, description="json: {\"schema\", \"payload\"} for Kafka Connect's JsonConverter (schemas.enable=true)."
    )
    envelope_vector: Literal["double", "float"] = Field(
        "double", description="json envelope and avro: the vector's Connect type, named "
        "io.debezium.data.DoubleVector (pgvector vector) or FloatVector (halfvec, pgvector >= 0.7)."
    )

    @field_validator("payload_fields", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return json.loads(value) if value.startswith("[") else [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("payload_field", mode="before")
    @classmethod
    def _empty_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def binary_dtype(self) -> str | None:
        """The element type of a binary format, None for json."""
        if self.format == OutputFormat.f32:
            return "float32"
        return self.dtype if self.format == OutputFormat.binary else None


class ChunkingSettings(BaseModel):
    """Long documents -> one output per chunk (see worker/chunking.py for the exact rules)."""

    mode: Literal["off", "words", "tokens"] = Field("off", description="off, words or tokens.")
    size: int = Field(200, ge=2, description="Words (words mode) or tokens (tokens mode) per chunk.")
    overlap: int = Field(0, ge=0, description="Words or tokens shared by consecutive chunks.")
    max_word_chars: int = Field(
        40, ge=4, description="A longer run without spaces (CJK text) is cut into token windows."
    )
    id_format: str = Field(
        "{id}#{n}", description="Chunk id: {id} document id, {n} chunk index, {uuid} a UUIDv5 of both."
    )
    document_vector: bool = Field(
        False, description="Also publish the document vector: chunk vectors averaged by token count."
    )

    @field_validator("overlap")
    @classmethod
    def _overlap_below_size(cls, value: int, info: ValidationInfo) -> int:
        size = info.data.get("size")
        if size is not None and value >= size:  # chunks would advance by one word: a chunk per word
            raise ValueError(f"must be less than the chunk size ({size})")
        return value


class BatchSettings(BaseModel):
    """Micro-batching: a batch closes at max_messages or after max_wait_ms, whichever is first."""

    max_messages: int = Field(512, ge=1, le=100_000)
    max_wait_ms: int = Field(20, ge=0, le=60_000)
    max_prefetch_kbytes: int = Field(
        16384, ge=64, description="librdkafka queued.max.messages.kbytes: bound on prefetched input per process."
    )
    max_in_flight_batches: int = Field(
        8, ge=1, description="Batches produced but not yet acknowledged before the loop waits for them."
    )
    max_kbytes: int = Field(4096, ge=1, description="Input encoded at once: a batch holding more is processed in "
                            "parts of at most this (one message at least); bounds its texts, chunks and outputs.")


class MetricsSettings(BaseModel):
    """Prometheus /metrics and the /healthz, /readyz probes on one HTTP port."""

    enabled: bool = True
    host: str = Field("0.0.0.0", description="Bind address of the metrics/health server.")
    port: int = Field(9100, ge=0, le=65535)
    stall_timeout_s: float = Field(
        60.0, gt=0, description="/healthz fails when the loop made no progress this long while it has work."
    )
    statistics_interval_ms: int = Field(5000, ge=0, description="librdkafka statistics (lag) interval; 0 = off.")


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = Field("auto", description="auto: text on a terminal, else JSON.")


class Settings(BaseSettings):
    """Everything `python -m worker run` needs."""

    model_config = SettingsConfigDict(
        env_prefix="EMBED_", env_nested_delimiter="__", extra="ignore", case_sensitive=False
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    input_topic: str = Field("texts", min_length=1)
    output_topic: str = Field("embeddings", min_length=1)
    dlq_topic: str = Field("embeddings-dlq", min_length=1, description="Dead-letter topic for bad input.")
    model: ModelSettings = Field(default_factory=ModelSettings)
    input: InputSettings = Field(default_factory=InputSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    processing_guarantee: ProcessingGuarantee = Field(
        ProcessingGuarantee.at_least_once, description="at_least_once, or exactly_once (transactions)."
    )
    processes: str = Field(
        "1", pattern=r"^(auto|[1-9][0-9]*)$", description="Consumer processes (run --processes): N or auto."
    )
    shutdown_grace_s: float = Field(25.0, gt=0, le=600, description="SIGTERM: finish, flush, commit within this.")
    memory_limit_mb: int | None = Field(None, ge=0, description="Memory of all processes; unset = the cgroup's "
                                        "limit; 0 = no check. Start-up refuses settings whose peak cannot fit it.")

    @model_validator(mode="after")
    def _topics_differ(self) -> Settings:
        if self.output_topic == self.input_topic or self.dlq_topic == self.input_topic:
            raise ValueError("output_topic and dlq_topic must differ from input_topic")
        return self

    @model_validator(mode="after")
    def _schema_outputs(self) -> Settings:
        schema = self.output.format in SCHEMA_FORMATS
        if self.input.format in (InputFormat.avro, InputFormat.protobuf) and not self.schema_registry.url:
            raise ValueError(f"EMBED_INPUT__FORMAT={self.input.format.value} needs EMBED_SCHEMA_REGISTRY__URL")
        if schema and not self.schema_registry.url:
            raise ValueError(f"EMBED_OUTPUT__FORMAT={self.output.format.value} needs EMBED_SCHEMA_REGISTRY__URL")
        if self.output.schema_envelope and self.output.format != OutputFormat.json:
            raise ValueError("EMBED_OUTPUT__SCHEMA_ENVELOPE applies to EMBED_OUTPUT__FORMAT=json only")
        if (schema or self.output.schema_envelope) and self.output.payload_field:
            raise ValueError("EMBED_OUTPUT__PAYLOAD_FIELD (a nested payload) is not supported with avro, protobuf or "
                             "the schema envelope: their fields are top-level")
        return self


def env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable behind a validation error location."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return "EMBED_" + "__".join(p.upper() for p in parts) if parts else "EMBED_*"


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; raise SettingsError with one readable line per problem."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            msg = err["msg"]
            lines.append(f"{env_name(err['loc'])}: {msg}")
        raise SettingsError("invalid settings: " + "; ".join(lines)) from None
    except (json.JSONDecodeError, SourceError) as e:
        raise SettingsError(f"invalid settings: an EMBED_ variable holds JSON that does not parse ({e})") from None


def describe_settings() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, for `run --help` and the README."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            var = f"{prefix}{name.upper()}"
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, var + "__")
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, Enum):
                default = default.value
            rows.append((var, json.dumps(default) if isinstance(default, dict) else str(default),
                         field.description or ""))

    walk(Settings, "EMBED_")
    return rows
