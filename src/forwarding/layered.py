"""What a transport layered over another (TLS, WebSocket) passes straight through.

A layer changes what is written (records, frames), not flow control: the
buffer size, its marks and reading are the socket transport's own, so a
session over a layer is over its mark exactly when its socket is.
"""

from __future__ import annotations

import asyncio
from typing import Any


class LayeredTransport(asyncio.Transport):
    """The pass-through half of a layer's transport; subclasses write, and close."""

    def __init__(self, raw: asyncio.Transport) -> None:
        super().__init__()
        self._raw = raw

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._raw.get_extra_info(name, default)

    def abort(self) -> None:
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._raw.is_closing()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()
