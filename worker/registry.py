"""The schema registry of the avro and protobuf outputs: its client (confluent-kafka's), the subject, and the
registration (or look-up) of the output schema at start-up.

Why a module of its own: what can go wrong with the registry is decided here, once, before the first message.
A schema the registry rejects (incompatible with the subject, invalid), a subject without the schema while
auto-registration is off, or credentials refused: a settings error (one line, exit 2). A registry that cannot be
reached or answers 5xx: retried with back-off (the process is not ready meanwhile: it has not joined the group).
The schema id is then fixed for the process's life; the per-message path never calls the registry.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from worker.registry_settings import SchemaRegistrySettings
from worker.settings import SettingsError

log = logging.getLogger(__name__)
FIRST_RETRY_S, MAX_RETRY_S = 1.0, 30.0  # back-off of an unreachable registry: 1 s doubling to 30 s (also the input's)


class RegistryError(SettingsError):
    """The registry refused the output schema or the credentials: fix the settings or the subject (exit 2)."""


def client_config(rs: SchemaRegistrySettings) -> dict[str, Any]:
    """confluent-kafka's SchemaRegistryClient configuration, secrets unwrapped."""
    if not rs.url:
        raise SettingsError("invalid settings: EMBED_SCHEMA_REGISTRY__URL is not set")
    # no retries inside the client: `register` retries with its own back-off, and says so in the log
    conf: dict[str, Any] = {"url": rs.url, "timeout": rs.timeout_s, "max.retries": 0}
    if rs.basic_auth_user is not None and rs.basic_auth_password is not None:
        conf["basic.auth.user.info"] = f"{rs.basic_auth_user}:{rs.basic_auth_password.get_secret_value()}"
    if rs.bearer_token is not None:
        conf.update({"bearer.auth.credentials.source": "STATIC_TOKEN",
                     "bearer.auth.token": rs.bearer_token.get_secret_value(),
                     "bearer.auth.logical.cluster": rs.bearer_logical_cluster})
    if rs.ssl_ca_location:
        conf["ssl.ca.location"] = rs.ssl_ca_location
    return conf


def make_client(rs: SchemaRegistrySettings) -> Any:
    """The registry client (`mock://...` URLs give confluent-kafka's in-memory mock, for tests)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    try:
        return SchemaRegistryClient.new_client(client_config(rs))
    except (ValueError, TypeError, OSError) as e:  # a URL or CA file the client cannot use
        message = str(e).replace(rs.url or "", safe_url(rs.url))
        raise SettingsError(f"invalid settings: EMBED_SCHEMA_REGISTRY__*: {message}") from None


def safe_url(url: str | None) -> str:
    """The registry URL(s) without user:password@, for logs and error messages."""
    return re.sub(r"//[^/@,]*@", "//***@", url or "")


def subject_name(rs: SchemaRegistrySettings, topic: str) -> str:
    """The subject of the output topic's values: TopicNameStrategy, RecordNameStrategy or TopicRecordNameStrategy."""
    if rs.subject_name_strategy == "record":
        return rs.record_name
    if rs.subject_name_strategy == "topic_record":
        return f"{topic}-{rs.record_name}"
    return f"{topic}-value"


def transport_errors() -> tuple[type[BaseException], ...]:
    try:
        from confluent_kafka.schema_registry.common._httpx_compat import httpx

        return (httpx.TransportError, OSError)
    except ImportError:  # a client version without it: connection errors are OSErrors underneath
        return (OSError,)


def register(client: Any, rs: SchemaRegistrySettings, subject: str, schema: Any, *,
             sleep: Callable[[float], None] = time.sleep, max_attempts: int | None = None) -> int:
    """The schema id of `schema` under `subject`: registered (auto_register) or looked up. Unreachable registry
    or 5xx: retried with back-off (1 s doubling to 30 s), forever unless `max_attempts`. Anything else the
    registry answers with an error: RegistryError, one line with its message."""
    from confluent_kafka.schema_registry import SchemaRegistryError

    transport = transport_errors()
    delay, attempt = FIRST_RETRY_S, 0
    while True:
        attempt += 1
        try:
            if rs.auto_register:
                return int(client.register_schema(subject, schema))
            return int(client.lookup_schema(subject, schema).schema_id)
        except SchemaRegistryError as e:
            if e.http_status_code is not None and e.http_status_code < 500:
                raise RegistryError(_explain(e, rs, subject)) from None
            problem = f"HTTP {e.http_status_code}: {e.error_message}"
        except transport as e:
            problem = f"{type(e).__name__}: {e}"
        if max_attempts is not None and attempt >= max_attempts:
            raise RegistryError(f"schema registry {safe_url(rs.url)} unreachable after {attempt} attempts ({problem})")
        log.warning("schema registry unreachable; retrying (not ready until it answers)",
                    extra={"url": safe_url(rs.url), "subject": subject, "error": problem[:300], "retry_in_s": delay})
        sleep(delay)
        delay = min(delay * 2, MAX_RETRY_S)


def _explain(e: Any, rs: SchemaRegistrySettings, subject: str) -> str:
    status, message = e.http_status_code, str(e.error_message).replace("\n", " ")[:500]
    if status == 409:
        return (f"schema registry: the output schema is incompatible with subject '{subject}' "
                f"(HTTP 409: {message}); change the output settings or the subject's compatibility")
    if status == 404 and not rs.auto_register:
        return (f"schema registry: subject '{subject}' has no version with the output schema and "
                f"EMBED_SCHEMA_REGISTRY__AUTO_REGISTER=false (HTTP 404: {message}); register it first")
    if status in (401, 403):
        return (f"schema registry: credentials refused (HTTP {status}: {message}); check "
                "EMBED_SCHEMA_REGISTRY__BASIC_AUTH_USER/PASSWORD or BEARER_TOKEN")
    if status == 422:
        return f"schema registry: the output schema was rejected as invalid (HTTP 422: {message})"
    return f"schema registry: subject '{subject}': HTTP {status}: {message}"
