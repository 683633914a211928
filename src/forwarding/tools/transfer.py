"""``forwarding send`` and ``forwarding recv``: one file through the relay, checked at the end.

On the wire (inside end-to-end sealing when it is on): one JSON line
``{"name": ..., "size": N}``, then N bytes, then the 32-byte SHA-256 of those
bytes. The receiver checks the size and the hash before it renames the file
into place (docs/protocol.md, section 11).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO, cast

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .. import sync
from ..errors import ConnectionClosed, IntegrityError
from .common import Codec, e2e_key, say, tls_context

CHUNK = 1024 * 1024
MAX_HEADER = 64 * 1024


@contextmanager
def progress(args: argparse.Namespace, description: str, total: int) -> Iterator[Progress]:
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=args.no_progress or not sys.stderr.isatty(),
        transient=False,
    )
    with bar:
        bar.add_task(description, total=total)
        yield bar


def run_send(args: argparse.Namespace) -> int:
    codec = Codec(e2e_key(args))
    size = os.path.getsize(args.file)
    ch = sync.connect(args.relay, chid=args.chid, recvers=args.to, secret=args.secret, tls=tls_context(args), wait=True)
    say(args, f"sending {args.file} ({size} bytes) as {ch.chid}")
    digest = hashlib.sha256()
    header = json.dumps({"name": os.path.basename(args.file), "size": size}).encode() + b"\n"
    ch.send(codec.outgoing(header))
    sent = 0
    with open(args.file, "rb") as f, progress(args, "send", size) as bar:
        while sent < size and (chunk := f.read(min(CHUNK, size - sent))):
            digest.update(chunk)
            ch.send(codec.outgoing(chunk))
            sent += len(chunk)
            bar.advance(bar.task_ids[0], len(chunk))
    if sent != size:
        raise IntegrityError(f"{args.file} shrank while it was sent ({sent} of {size} bytes)")
    ch.send(codec.outgoing(digest.digest()) + codec.outgoing_end())
    ch.send_eof()
    while ch.recv():  # the relay closes once it has delivered everything we sent
        pass
    ch.close()
    say(args, f"sent {size} bytes, sha256 {digest.hexdigest()}")
    return 0


class _Reader:
    """Plaintext from the channel, with exact-length reads."""

    def __init__(self, recv: Callable[[int], bytes], codec: Codec) -> None:
        self._recv = recv
        self._codec = codec
        self._buf = bytearray()

    def _fill(self) -> bool:
        chunk = self._recv(CHUNK)
        if not chunk:
            return False
        self._buf += self._codec.incoming(chunk)
        return True

    def line(self) -> bytes:
        while (end := self._buf.find(b"\n")) < 0:
            if len(self._buf) > MAX_HEADER:
                raise IntegrityError("no transfer header: is the sender `forwarding send`?")
            if not self._fill():
                raise ConnectionClosed("the sender left before its header arrived")
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line

    def some(self, limit: int) -> bytes:
        # A read may end inside a sealed record and yield no plaintext yet: keep
        # reading until there is some or the channel ends.
        while not self._buf:
            if not self._fill():
                return b""
        out = bytes(self._buf[:limit])
        del self._buf[:limit]
        return out

    def end(self) -> None:
        """Wait for the end-to-end final record, if sealing is on (the sender's session
        ending does not end ours, so EOF is not the signal)."""
        while not self._codec.finished and self._fill():
            pass
        self._codec.incoming_end()


def run_recv(args: argparse.Namespace) -> int:
    codec = Codec(e2e_key(args))
    ch = sync.connect(args.relay, chid=args.chid, secret=args.secret, tls=tls_context(args))
    say(args, f"waiting as {ch.chid}", always=not args.chid)
    reader = _Reader(ch.recv, codec)
    try:
        header = json.loads(reader.line())
        name, size = header["name"], header["size"]
        if not isinstance(name, str) or not isinstance(size, int) or size < 0:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("bad transfer header: is the sender `forwarding send`?") from None
    path = args.output or _safe_name(name)
    part = None if path == "-" else f"{path}.part"
    out = cast(BinaryIO, sys.stdout.buffer if part is None else open(part, "wb"))
    digest = hashlib.sha256()
    got = 0
    try:
        with progress(args, "recv", size) as bar:
            while got < size:
                chunk = reader.some(min(CHUNK, size - got))
                if not chunk:
                    raise IntegrityError(f"transfer cut short after {got} of {size} bytes")
                digest.update(chunk)
                out.write(chunk)
                got += len(chunk)
                bar.advance(bar.task_ids[0], len(chunk))
        trailer = b""
        while len(trailer) < 32:
            more = reader.some(32 - len(trailer))
            if not more:
                raise IntegrityError(f"all {size} bytes arrived but the SHA-256 did not")
            trailer += more
        if trailer != digest.digest():
            raise IntegrityError(
                f"SHA-256 mismatch: the sender's is {trailer.hex()}, the received bytes' is {digest.hexdigest()}"
            )
        reader.end()
    except BaseException:
        if part is not None:
            out.close()
            os.unlink(part)
        raise
    finally:
        ch.close()
    if part is not None:
        out.close()
        os.replace(part, path)
    say(args, f"received {path} ({size} bytes, sha256 {digest.hexdigest()})", always=True)
    return 0


def _safe_name(name: str) -> str:
    """The sender's file name, reduced to a plain name in the current directory."""
    base = os.path.basename(name.replace("\\", "/"))
    if base in ("", ".", "..") or base.startswith("."):
        base = "received.bin"
    return base
