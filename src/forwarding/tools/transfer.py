"""``forwarding send`` and ``forwarding recv``: one file through the relay, confirmed end to end.

On the wire (docs/protocol.md, section 10.2), inside end-to-end sealing when it
is on, each direction its own stream:

* sender -> receiver: one JSON line ``{"name": ..., "size": N}``, N bytes, their
  32-byte SHA-256;
* receiver -> sender: one JSON line, ``{"ok": true, "size": N, "sha256": HEX}``
  once the file is checked and in place, or ``{"ok": false, "error": TEXT}``.

The sender is a raw session that names the receiver (with ``wait`` and
``hangup``: it learns at once if the receiver leaves). It exits 0 only on an
``ok`` answer carrying its own hash. The receiver is a framed session: it takes
the first sender (or ``--from``), points its recvers at it to answer, and knows
from the sender's ``eof`` event when the sender left before the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, cast

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..client.connection import Channel
from ..client.framed import Ended, FramedChannel
from ..errors import Error, IntegrityError
from .common import Codec, ToolError, e2e_key, open_channel, say

CHUNK = 1024 * 1024
MAX_HEADER = 64 * 1024
REPLY_TIMEOUT = 60.0
"""Seconds the sender waits, after its last byte, for the receiver's answer."""


class TransferFailed(ToolError):
    """The transfer did not happen as promised; the message says what did."""


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


def _mb(n: int) -> str:
    return f"{n:,} bytes" if n < 10_000_000 else f"{n / 1e6:,.0f} MB"


# -- send -----------------------------------------------------------------------


def run_send(args: argparse.Namespace) -> int:
    return asyncio.run(_send(args))


async def _send(args: argparse.Namespace) -> int:
    if not args.to or len(args.to) != 1:
        raise ToolError("send needs exactly one receiver: --to CHID")
    peer = args.to[0]
    if os.path.isdir(args.file):
        raise ToolError(f"{args.file} is a directory; send one file (an archive of it, for example)")
    key = e2e_key(args)
    codec = Codec(key)
    with open(args.file, "rb") as f:  # opened before joining: a missing file costs no session
        size = os.fstat(f.fileno()).st_size
        ch = await open_channel(args, recvers=[peer], hangup=True)
        assert isinstance(ch, Channel)
        try:
            return await _send_over(args, ch, f, size, peer, codec)
        finally:
            await ch.close()


async def _send_over(args: argparse.Namespace, ch: Channel, f: BinaryIO, size: int, peer: str, codec: Codec) -> int:
    say(args, f"sending {args.file} ({size} bytes) to {peer} as {ch.chid}")
    reply = asyncio.ensure_future(_read_reply(ch, Codec(e2e_key(args))))
    digest = hashlib.sha256()
    header = json.dumps({"name": os.path.basename(args.file), "size": size}).encode() + b"\n"
    sent = 0
    try:
        await ch.send(codec.outgoing(header))
        with progress(args, "send", size) as bar:
            while sent < size and not reply.done():
                chunk = f.read(min(CHUNK, size - sent))
                if not chunk:
                    break
                digest.update(chunk)
                await ch.send(codec.outgoing(chunk))
                sent += len(chunk)
                bar.advance(bar.task_ids[0], len(chunk))
        if not reply.done():
            if sent != size:
                raise TransferFailed(f"{args.file} shrank while it was sent ({sent} of {size} bytes)")
            await ch.send(codec.outgoing(digest.digest()) + codec.outgoing_end())
    except (OSError, Error):
        if not reply.done():
            raise TransferFailed(f"the relay ended the session after {_mb(sent)} of {_mb(size)}") from None
    try:
        answer = await asyncio.wait_for(reply, REPLY_TIMEOUT)
    except TimeoutError:
        raise TransferFailed(f"{peer} did not confirm within {REPLY_TIMEOUT:g} s of the last byte") from None
    if answer is None:
        raise TransferFailed(f"{peer} left after {_mb(sent)} of {_mb(size)}, without confirming")
    if not answer.get("ok"):
        raise TransferFailed(f"{peer} refused the transfer: {answer.get('error', 'no reason given')}")
    if sent != size or answer.get("sha256") != digest.hexdigest() or answer.get("size") != size:
        raise TransferFailed(f"{peer} confirmed other bytes than these: {answer}")
    say(args, f"{peer} has {args.file}: {size} bytes, sha256 {digest.hexdigest()}", always=True)
    return 0


async def _read_reply(ch: Channel, codec: Codec) -> dict[str, Any] | None:
    """The receiver's one-line answer, or ``None`` if the session ended first."""
    buf = bytearray()
    while b"\n" not in buf:
        try:
            chunk = await ch.recv(65536)
        except OSError:
            return None
        if not chunk:
            return None
        try:
            buf += codec.incoming(chunk)
        except IntegrityError:
            raise TransferFailed(
                "the receiver's answer does not open with our key: it has another --e2e-key or passphrase"
            ) from None
        if len(buf) > MAX_HEADER:
            raise TransferFailed("the receiver answered with something else than forwarding recv's reply")
    try:
        answer = json.loads(bytes(buf[: buf.index(b"\n")]))
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise TransferFailed("the receiver answered with something else than forwarding recv's reply")
    return answer


# -- recv -----------------------------------------------------------------------


def run_recv(args: argparse.Namespace) -> int:
    return asyncio.run(_recv(args))


async def _recv(args: argparse.Namespace) -> int:
    key = e2e_key(args)
    if args.output and args.output != "-" and os.path.isdir(args.output):
        raise ToolError(f"-o {args.output} is a directory; give a file name")
    recvers = [args.sender] if args.sender else None
    ch = await open_channel(args, recvers=recvers, framed=True)
    assert isinstance(ch, FramedChannel)
    say(args, f"waiting as {ch.chid}" + (f" for {args.sender}" if args.sender else ""), always=not args.chid)
    receiver = _Receiver(args, ch, Codec(key), Codec(key))
    try:
        return await receiver.run()
    finally:
        await ch.close()


class _Receiver:
    """One transfer from the first sender that speaks (or ``--from``)."""

    def __init__(self, args: argparse.Namespace, ch: FramedChannel, codec: Codec, reply_codec: Codec) -> None:
        self.args = args
        self.ch = ch
        self.codec = codec
        self.reply_codec = reply_codec
        self.sender: str | None = args.sender
        self.pointed: asyncio.Task[list[str]] | None = None
        self.buf = bytearray()
        self.ended = False

    async def _fill(self) -> bool:
        """More plaintext from our sender into ``buf``; False once it has ended."""
        while not self.ended:
            item = await self.ch.receive()
            if item is None:
                self.ended = True
                break
            if isinstance(item, Ended):
                if item.chid == self.sender:
                    self.ended = True
                continue
            chid, data = item
            if self.sender is None:
                self.sender = chid
                self.pointed = asyncio.ensure_future(self.ch.set_recvers([chid]))  # to answer it
            if chid != self.sender:
                continue  # not our sender: its bytes never reach the file
            try:
                self.buf += self.codec.incoming(data)
            except IntegrityError as exc:
                await self._answer({"ok": False, "error": f"the stream failed its end-to-end check: {exc}"})
                raise TransferFailed(
                    f"{chid}'s stream failed its end-to-end check ({exc}): tampered with on the way, "
                    "or sealed with another --e2e-key or passphrase"
                ) from None
            return True
        return False

    async def _line(self) -> bytes:
        while (end := self.buf.find(b"\n")) < 0:
            if len(self.buf) > MAX_HEADER or not await self._fill():
                break
        if end < 0:
            if self.sender is None:
                raise TransferFailed("the session ended before any sender spoke")
            await self._answer({"ok": False, "error": "that is not forwarding send's header"})
            raise TransferFailed(f"no transfer header from {self.sender}: is it forwarding send?")
        line = bytes(self.buf[:end])
        del self.buf[: end + 1]
        return line

    async def _take(self, limit: int) -> bytes:
        while not self.buf:
            if not await self._fill():
                return b""
        out = bytes(self.buf[:limit])
        del self.buf[:limit]
        return out

    async def _answer(self, message: dict[str, Any]) -> None:
        if self.sender is None:
            return
        try:
            if self.pointed is not None:
                await self.pointed
            else:
                await self.ch.set_recvers([self.sender])
            line = json.dumps(message).encode() + b"\n"
            await self.ch.send(self.reply_codec.outgoing(line) + self.reply_codec.outgoing_end())
        except (OSError, Error):
            pass  # the sender has gone: nobody to tell

    async def run(self) -> int:
        args = self.args
        try:
            header = json.loads(await self._line())
            name, size = header["name"], header["size"]
            if not isinstance(name, str) or isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            await self._answer({"ok": False, "error": "that is not forwarding send's header"})
            raise TransferFailed(f"bad transfer header from {self.sender}: is it forwarding send?") from None
        sender = self.sender
        path = args.output or _safe_name(name)
        if path != "-" and os.path.exists(path) and not args.force:
            await self._answer({"ok": False, "error": f"{path} exists there (the receiver may use --force)"})
            raise TransferFailed(f"{path} exists; --force to overwrite it")
        part = None if path == "-" else f"{path}.part"
        try:
            out = cast(BinaryIO, sys.stdout.buffer if part is None else open(part, "wb"))
        except OSError as exc:
            await self._answer({"ok": False, "error": f"could not write {path}: {exc.strerror}"})
            raise TransferFailed(f"cannot write {path}: {exc.strerror}") from None
        digest = hashlib.sha256()
        got = 0
        try:
            with progress(args, "recv", size) as bar:
                while got < size:
                    chunk = await self._take(min(CHUNK, size - got))
                    if not chunk:
                        raise TransferFailed(f"{sender} left after {_mb(got)} of {_mb(size)}")
                    digest.update(chunk)
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        await self._answer({"ok": False, "error": f"could not write {path}: {exc.strerror}"})
                        raise TransferFailed(f"cannot write {path}: {exc.strerror}") from None
                    got += len(chunk)
                    bar.advance(bar.task_ids[0], len(chunk))
            trailer = b""
            while len(trailer) < 32:
                more = await self._take(32 - len(trailer))
                if not more:
                    raise TransferFailed(f"{sender} left after all {size} bytes but before their SHA-256")
                trailer += more
            if trailer != digest.digest():
                await self._answer({"ok": False, "error": "the SHA-256 of what arrived is not the sender's"})
                raise TransferFailed(
                    f"SHA-256 mismatch: {sender}'s is {trailer.hex()}, the received bytes' is {digest.hexdigest()}"
                )
            if self.codec.sealed:
                while not self.codec.finished and await self._fill():
                    pass
                self.codec.incoming_end()  # raises if the sealed stream was cut before its end
            if part is not None:
                out.close()
                os.replace(part, path)
        except BaseException:
            if part is not None:
                out.close()
                if not args.keep_partial:
                    os.unlink(part)
            raise
        await self._answer({"ok": True, "size": size, "sha256": digest.hexdigest()})
        say(args, f"received {path} from {sender} ({size} bytes, sha256 {digest.hexdigest()})", always=True)
        return 0


def _safe_name(name: str) -> str:
    """The sender's file name, reduced to a plain name in the current directory."""
    base = os.path.basename(name.replace("\\", "/"))
    if base in ("", ".", "..") or base.startswith(".") or any(c in base for c in "\0\n\r"):
        base = "received.bin"
    return base
