"""Connections per source address, counted for the whole host by the workers of ``serve --workers``.

The kernel spreads one address's connections over all the workers
(``SO_REUSEPORT`` hashes each connection's ports), so a cap that each worker
kept alone would let one address hold N times ``--max-connections-per-ip``.
The workers count in one table instead: a file in the supervisor's private
directory (server/workers.py), mapped into every worker.

* Worker *i* writes only row *i*, and everyone reads the sum of the rows: one
  writer per cell, so no locks, and a worker that dies takes its row with it
  (its next run zeroes it: its connections died with it).
* An address counts in two cells of a row, picked by two hashes keyed with a
  secret of this run (so nobody can aim addresses at one cell), and its count
  is the smaller sum: two addresses share a cell now and then, both cells
  rarely, and a shared cell can only refuse early, never admit past the cap.
* Checking and counting are not one step across workers: N workers admitting
  connections from one address at the same instant may let it reach the cap
  plus N - 1, no further.

Rows are ``CELLS`` 32-bit counts (64 KiB); a check reads 2N cells.
"""

from __future__ import annotations

import hashlib
import mmap
import os

CELLS = 1 << 14
_CELL = 4  # bytes: a C int, the "i" of memoryview.cast


def create(path: str, workers: int) -> None:
    """The supervisor's part: a zeroed table for ``workers`` rows, readable by our user only."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, workers * CELLS * _CELL)
    finally:
        os.close(fd)


class HostCounts:
    """One worker's view of the table: its own row to write, all of them to read."""

    def __init__(self, path: str, index: int, workers: int, key: bytes) -> None:
        if not 0 <= index < workers:
            raise ValueError(f"worker {index} of {workers}")
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, workers * CELLS * _CELL)
        finally:
            os.close(fd)
        self._cells = memoryview(self._map).cast("i")
        self._own = index * CELLS
        self._rows = range(0, workers * CELLS, CELLS)
        self._key = key
        self._cells[self._own : self._own + CELLS] = memoryview(bytes(CELLS * _CELL)).cast("i")

    def cells(self, key: str) -> tuple[int, int]:
        """The two cells that count ``key`` (an address, or an IPv6 /64)."""
        digest = hashlib.blake2b(key.encode(), key=self._key, digest_size=8).digest()
        a, b = int.from_bytes(digest[:4], "little") % CELLS, int.from_bytes(digest[4:], "little") % CELLS
        return (a, b) if a != b else (a, (a + 1) % CELLS)  # one cell twice would count each connection twice

    def count(self, cells: tuple[int, int]) -> int:
        """Connections the whole host holds from the address of ``cells`` (or more, never fewer)."""
        c = self._cells
        a, b = cells
        return min(sum(c[row + a] for row in self._rows), sum(c[row + b] for row in self._rows))

    def add(self, cells: tuple[int, int], step: int) -> None:
        a, b = cells
        self._cells[self._own + a] += step
        self._cells[self._own + b] += step
