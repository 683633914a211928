"""``forwarding connect``: like nc. Standard input goes to the receivers; what arrives goes to standard output.

As with ``nc -N``, the end of standard input ends our sending side (a FIN,
docs/protocol.md 5.1) and what arrives is still printed until the relay ends
our input, when every session that sends to us has finished. A standard input
that ends before its first byte (``< /dev/null``, a script) sends no FIN: the
session just receives, as ``nc -d`` does. ``-q SECONDS`` quits that long after
the end of standard input, as nc's ``-q`` does.

One event loop does it all: a thread only reads standard input (which may be
a file, a pipe or a terminal), handing chunks over a small bounded queue.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading

from ..client.connection import Channel
from ..errors import Error, IntegrityError
from .common import Codec, ToolError, e2e_key, open_channel, say

READ = 256 * 1024


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_connect(args))


async def _connect(args: argparse.Namespace) -> int:
    codec = Codec(e2e_key(args))
    ch = await open_channel(args, recvers=args.to, hangup=args.hangup, wait=args.wait)
    assert isinstance(ch, Channel)
    online = f"; online: {', '.join(ch.online)}" if ch.online is not None else ""
    say(args, f"joined as {ch.chid}{online}", always=not args.chid)
    missing = [c for c in args.to or [] if c not in (ch.online or [])]
    if missing:  # without --wait the relay drops what is sent to them (docs/protocol.md, 5)
        say(args, f"not online: {', '.join(missing)}; what you send them is dropped (--wait waits)", always=True)
    try:
        if codec.sealed:
            # Prove the key at once: a bridge dials its target only then (docs/protocol.md,
            # 13.3), and many services speak first. Receive-only: our stream is empty.
            await ch.send(codec.outgoing_end() if args.no_stdin else codec.hello())
        download = asyncio.ensure_future(_download(ch, codec))
        if args.no_stdin:
            await download
            return 0
        # As nc: done when both directions are, whichever ends first.
        upload = asyncio.ensure_future(_upload(args, ch, codec))
        done, _ = await asyncio.wait([download, upload], return_when=asyncio.FIRST_COMPLETED)
        if download in done:
            download.result()  # raises what went wrong receiving
            await upload
            return 0
        upload.result()  # raises what went wrong sending
        if args.quit_after is not None:
            await asyncio.wait([download], timeout=args.quit_after)
            if not download.done():
                download.cancel()
                return 0  # -q ran out: quitting is what was asked
        await download
    finally:
        await ch.close()
    return 0


async def _download(ch: Channel, codec: Codec) -> None:
    stdout = sys.stdout.buffer
    try:
        async for chunk in ch:
            data = codec.incoming(chunk)
            if data:
                stdout.write(data)
                stdout.flush()
        codec.incoming_end()  # a sealed stream must have ended properly
    except IntegrityError as exc:
        raise ToolError(f"what arrived failed its end-to-end check: {exc}") from None
    except ConnectionResetError:
        raise ToolError("the relay reset the connection") from None


async def _upload(args: argparse.Namespace, ch: Channel, codec: Codec) -> None:
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue(4)  # the thread waits while the relay pushes back
    fd = sys.stdin.fileno()

    def read_stdin() -> None:
        # os.read, not sys.stdin: a daemon thread blocked inside a buffered
        # reader's lock makes interpreter shutdown abort.
        while True:
            try:
                chunk = os.read(fd, READ)
            except OSError:
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(chunks.put(chunk), loop).result()
            except RuntimeError:  # the loop has gone
                return
            if not chunk:
                return

    threading.Thread(target=read_stdin, daemon=True).start()
    sent = False
    try:
        while chunk := await chunks.get():
            await ch.send(codec.outgoing(chunk))
            sent = True
        if sent or codec.sealed:
            await ch.send(codec.outgoing_end())
            await ch.send_eof()  # the relay passes our end on and we go on receiving
        say(args, "end of standard input" + ("; sent FIN" if sent else ": receiving only"))
    except (OSError, Error) as exc:
        raise ToolError(f"the relay ended the session while we were sending: {exc}") from None
