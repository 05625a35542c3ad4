"""The schema registry settings (EMBED_SCHEMA_REGISTRY__*), for the avro and protobuf output formats.

A module of its own to keep worker/settings.py under ~400 lines; `Settings.schema_registry` is this one.
The password and the bearer token are `SecretStr`, like the librdkafka pass-through values: a settings object
never prints them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator


class SchemaRegistrySettings(BaseModel):
    """The schema registry of the avro and protobuf output formats (Confluent API; Apicurio's /apis/ccompat/v7)."""

    url: str | None = Field(None, description="Registry URL(s), comma-separated; required for avro/protobuf output.")
    basic_auth_user: str | None = Field(None, description="Basic auth user name.")
    basic_auth_password: SecretStr | None = Field(None, description="Basic auth password (a secret).")
    bearer_token: SecretStr | None = Field(None, description="Static bearer token (a secret); not with basic auth.")
    bearer_logical_cluster: str = Field("", description="bearer auth: the target-sr-cluster header.")
    ssl_ca_location: str | None = Field(None, description="CA file or directory that signs the registry's TLS.")
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one registry request.")
    auto_register: bool = Field(
        True, description="Register the output schema at start; false = only look it up (it must be registered)."
    )
    subject_name_strategy: Literal["topic", "record", "topic_record"] = Field(
        "topic", description="Subject: topic = <topic>-value (TopicNameStrategy); record = the record name "
        "(RecordNameStrategy); topic_record = <topic>-<record name> (TopicRecordNameStrategy)."
    )
    record_name: str = Field(
        "embedstream.Embedding", pattern=r"^([A-Za-z_][A-Za-z0-9_]*\.)*[A-Za-z_][A-Za-z0-9_]*$",
        description="Full name of the record (Avro namespace.name, Protobuf package.message).",
    )

    @field_validator("url", "basic_auth_user", "ssl_ca_location", mode="before")
    @classmethod
    def _empty_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value  # an empty variable = unset

    @model_validator(mode="after")
    def _one_auth(self) -> SchemaRegistrySettings:
        if self.bearer_token is not None and (self.basic_auth_user or self.basic_auth_password):
            raise ValueError("set basic auth (BASIC_AUTH_USER/PASSWORD) or BEARER_TOKEN, not both")
        if (self.basic_auth_user is None) != (self.basic_auth_password is None):
            raise ValueError("basic auth needs both BASIC_AUTH_USER and BASIC_AUTH_PASSWORD")
        return self
