"""JSON-lines logging to stdout: every line has `timestamp`, `level`, `logger` and `message`,
plus the `request_id` of the request being served, the `trace_id` of the active span and the
`user_id` of the authenticated caller, where known. Nothing else about the caller is logged:
no emails, tokens, passwords or headers (slow statements are logged without parameters)."""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from app.kit.telemetry import current_trace_id

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
user_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("user_id", default=None)

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, written by orjson."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (request_id := request_id_var.get()) is not None:
            entry["request_id"] = request_id
        if (trace_id := current_trace_id()) is not None:
            entry["trace_id"] = trace_id
        if (user_id := user_id_var.get()) is not None:
            entry["user_id"] = user_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter()
        if json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    # Thread and process names are looked up for every record and never written by the JSON
    # lines: decided once here rather than per access-log line.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = not json
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log is replaced by ours (route template, duration, request id).
    logging.getLogger("uvicorn.access").disabled = True
