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


class TooMuchInput(Exception):
    """More than ``max_total`` bytes of lines, blank ones included, went through the buffer."""

    def __init__(self, max_total: int) -> None:
        super().__init__(f"handshake exceeds {max_total} bytes before hs4, blank lines included")
        self.max_total = max_total


_BLANK = b" \t\r\n"


class LineBuffer:
    """Accumulates bytes and hands out complete lines.

    Memory is bounded by ``max_line`` plus the size of one ``feed`` call: the
    buffer is checked after every feed and refuses to hold an unterminated line
    longer than ``max_line``. Work is linear in the bytes fed, blank lines
    included: :meth:`skip_blank` drops a run of them in one C call, not one
    line at a time (each of which would move the rest of the buffer). With
    ``max_total``, the lines handed out and skipped may add up to that many
    bytes, so a peer cannot keep a connection busy with endless blank lines.
    """

    __slots__ = ("_buf", "_scanned", "max_line", "_max_total", "_consumed")

    def __init__(self, max_line: int, max_total: int | None = None) -> None:
        self._buf = bytearray()
        self._scanned = 0
        self.max_line = max_line
        self._max_total = max_total
        self._consumed = 0

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
        self._consume(end + 1)
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        self._scanned = 0
        return line

    def skip_blank(self) -> None:
        """Drop the whitespace (spaces, tabs, CR, LF) at the front: blank lines, and the indent of the next."""
        buf = self._buf
        if buf and buf[0] in _BLANK:
            n = len(buf) - len(buf.lstrip(_BLANK))
            self._consume(n)
            del buf[:n]
            self._scanned = 0

    def _consume(self, n: int) -> None:
        self._consumed += n
        if self._max_total is not None and self._consumed > self._max_total:
            raise TooMuchInput(self._max_total)

    def take_rest(self) -> bytes:
        """Remove and return everything buffered (the bytes after the last line)."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return rest

    def peek(self) -> bytes:
        """A copy of everything buffered, left in place."""
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)
