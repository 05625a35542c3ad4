"""Structured logs: one JSON object per line for machines, readable text on a terminal.

Fields passed with `extra={...}` become keys of the JSON object. Values of keys that look like secrets
are masked here as a last line of defence; the settings never hand them to a log call in the first place.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from worker.settings import is_sensitive

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra` fields of a record, secrets masked."""
    out: dict[str, Any] = {}
    for k, v in vars(record).items():
        if k in _STD_ATTRS or k.startswith("_"):
            continue
        out[k] = "***" if is_sensitive(k) else v
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(record_fields(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={v}" for k, v in record_fields(record).items())
        line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}" + (f"  {fields}" if fields else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "INFO", fmt: str = "auto", stream: Any = None) -> None:
    """Configure the root logger once: JSON unless `fmt` is text, or auto on a terminal."""
    stream = stream or sys.stderr
    use_text = fmt == "text" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter() if use_text else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
