"""``forwarding chat``: a terminal group chat over a framed session.

Each line typed is one message; each message received is printed with its
sender's chid, and peers joining and leaving are announced. With no ``--to``
the chat is with everyone on the relay (broadcast).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..client.framed import FramedChannel
from ..errors import SessionClosed
from .common import open_channel

MAX_LINE = 64 * 1024


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_chat(args))


async def _chat(args: argparse.Namespace) -> int:
    ch = await open_channel(args, recvers=args.to, framed=True, wait=False)
    assert isinstance(ch, FramedChannel)
    async with ch:
        _say(f"* you are {ch.chid}; type a line and press Enter, Ctrl-D to leave")
        tasks = [
            asyncio.create_task(_show_messages(ch)),
            asyncio.create_task(_show_presence(ch)),
        ]
        typed = asyncio.create_task(_send_lines(ch))
        done, _ = await asyncio.wait([typed, tasks[0]], return_when=asyncio.FIRST_COMPLETED)
        for task in [*tasks, typed]:
            task.cancel()
        if typed in done:
            await ch.close("left the chat")
            return 0
        reason = ch.closed_because
        _say(f"* the relay ended the chat: {reason.desc}" if reason else "* the relay closed the connection")
        return 0 if reason is None or isinstance(reason, SessionClosed) and reason.code == "client_closed" else 1


async def _show_messages(ch: FramedChannel) -> None:
    async for sender, data in ch:
        text = data.decode("utf-8", errors="replace").rstrip("\n")
        for line in text.splitlines() or [""]:
            _say(f"{sender}: {line}")


async def _show_presence(ch: FramedChannel) -> None:
    async for event in ch.presence():
        _say(f"* {event.chid} {'is here' if event.online else 'left'}")


async def _send_lines(ch: FramedChannel) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        await ch.send(line.rstrip(b"\n"))


def _say(text: str) -> None:
    print(text, flush=True)
