"""Log set-up: plain text (``key=value`` pairs) or one JSON object per line.

Code logs a short message and puts its data in ``extra={"fields": {...}}``, so
both formats carry the same fields and machines never parse prose.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
import time
from typing import Any

FORMATS = ("text", "json")


_tag: dict[str, Any] = {}
"""Fields every line carries: a worker's node id (``serve --workers``), so that interleaved lines say whose."""


def tag(**fields: Any) -> None:
    _tag.update(fields)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    if not isinstance(fields, dict):
        return _tag
    return {**fields, **_tag} if _tag else fields  # last: patterns that read the line's start still match


def _timestamp(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.getMessage()]
        for key, value in _fields(record).items():
            text = value if isinstance(value, int | float) else json.dumps(str(value), ensure_ascii=False)
            parts.append(f"{key}={text}")
        line = " ".join(str(p) for p in parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname, "msg": record.getMessage()}
        obj.update(_fields(record))
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


_file: logging.FileHandler | None = None


def configure(level: str = "info", fmt: str = "text", path: str | None = None) -> None:
    """Log to standard error, or to ``path`` (appended; :func:`reopen` after logrotate moves it)."""
    global _file
    handler: logging.Handler
    if path is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = _file = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("forwarding")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def reopen() -> None:
    """Close and reopen the log file (SIGUSR1): logrotate has renamed it, new lines go to a new file."""
    if _file is None:
        return
    _file.acquire()
    try:
        _file.close()
        _file.stream = _file._open()
    finally:
        _file.release()
    logging.getLogger("forwarding").info("log file reopened", extra={"fields": {"path": _file.baseFilename}})


def blur_address(host: str) -> str:
    """``192.0.2.77`` -> ``192.0.2.0/24``, an IPv6 address -> its /48: enough to tell networks apart, not people."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "?"
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


class Limited:
    """At most ``per_minute`` lines a minute of one kind; the rest counted in one summary line.

    For lines a stranger can cause (refusals): they must not flood the log."""

    def __init__(self, logger: logging.Logger, message: str, per_minute: int = 20) -> None:
        self._logger = logger
        self._message = message
        self._per_minute = per_minute
        self._since = float("-inf")
        self._logged = self._skipped = 0

    def log(self, level: int, fields: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._since >= 60:
            if self._skipped:
                self._logger.log(level, f"{self._message}: not logged", extra={"fields": {"count": self._skipped}})
            self._since, self._logged, self._skipped = now, 0, 0
        if self._logged < self._per_minute:
            self._logged += 1
            self._logger.log(level, self._message, extra={"fields": fields})
        else:
            self._skipped += 1
