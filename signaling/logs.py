"""Structured JSON logs, one object per line, carrying the request or session id.

Tokens never reach a log: they travel in headers, WebSocket messages and URL fragments,
none of which is logged, and nothing here formats a request body.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)


CHATTY_LIBRARIES = ("aioice",)
"""Libraries whose INFO lines are per-packet-exchange detail: aioice logs every candidate
pair's state change (four lines per participant on loopback, more on real networks). They
log at WARNING and above unless the node logs at DEBUG; a connection that ICE cannot set up
is logged once, as its session's "media failed" warning (signaling/ws.py)."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, var in (("request", request_id), ("session", session_id)):
            value = var.get()
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in CHATTY_LIBRARIES:
        quiet = logging.NOTSET if root.level <= logging.DEBUG else max(root.level, logging.WARNING)
        logging.getLogger(name).setLevel(quiet)
