"""Splitting a byte stream into ``\\n``-terminated lines, with a length limit.

The newline search resumes where the previous one stopped, so a peer that sends
one byte at a time costs linear time, not quadratic (h11's ``_receivebuffer``).
"""

from __future__ import annotations


class LineTooLong(Exception):
    """A line grew past ``max_line`` bytes without a newline."""

    def __init__(self, max_line: int) -> None:
        super().__init__(f"handshake line exceeds {max_line} bytes")
        self.max_line = max_line


class LineBuffer:
    """Accumulates bytes and hands out complete lines.

    Memory is bounded by ``max_line`` plus the size of one ``feed`` call: the
    buffer is checked after every feed and refuses to hold an unterminated line
    longer than ``max_line``.
    """

    __slots__ = ("_buf", "_scanned", "max_line")

    def __init__(self, max_line: int) -> None:
        self._buf = bytearray()
        self._scanned = 0
        self.max_line = max_line

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_line(self) -> bytes | None:
        """Return the next line without its terminator, or ``None`` if none is complete.

        Raises :class:`LineTooLong` when the line (complete or not) is longer than
        ``max_line`` bytes, terminator excluded.
        """
        end = self._buf.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buf)
            if self._scanned > self.max_line:
                raise LineTooLong(self.max_line)
            return None
        if end > self.max_line:
            raise LineTooLong(self.max_line)
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        self._scanned = 0
        return line

    def take_rest(self) -> bytes:
        """Remove and return everything buffered (the bytes after the last line)."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return rest

    def __len__(self) -> int:
        return len(self._buf)
