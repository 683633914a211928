"""``forwarding bridge``: the original forwarding_client. Joins the relay and pipes each
session to a local TCP service, reconnecting with backoff when either side drops.

One relay session serves one connection to the target: the target is dialled
when the first bytes arrive through the relay, and when either side ends, both
are closed and the bridge joins the relay afresh for the next client.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random

from ..client.address import parse_address
from ..client.connection import Channel, connect
from ..errors import Error
from .common import Codec, e2e_key, tls_context

log = logging.getLogger("forwarding.bridge")

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0


async def bridge(args: argparse.Namespace, once: bool = False) -> None:
    target = parse_address(args.target, default_port=0)
    if not target[1]:
        raise SystemExit("forwarding bridge: --target needs a port, e.g. 127.0.0.1:22")
    key = e2e_key(args)
    backoff = BACKOFF_FIRST
    while True:
        try:
            # hangup: the relay ends our session the moment the client leaves, so
            # the next client can never reach this session's target connection.
            ch = await connect(
                args.relay, chid=args.chid, recvers=args.to, secret=args.secret, tls=tls_context(args), hangup=True
            )
        except (OSError, Error) as exc:
            delay = backoff * random.uniform(0.8, 1.2)  # jitter: bridges restarting together spread out
            log.warning("relay unavailable", extra={"fields": {"error": str(exc), "retry_in": round(delay, 2)}})
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, BACKOFF_MAX)
            continue
        backoff = BACKOFF_FIRST
        log.info("joined", extra={"fields": {"chid": ch.chid, "to": ",".join(args.to or ["*"])}})
        try:
            await _serve_one(ch, target, Codec(key))
        except (OSError, Error) as exc:
            log.warning("session ended", extra={"fields": {"error": str(exc)}})
        finally:
            await ch.close()
        if once:
            return


async def _serve_one(ch: Channel, target: tuple[str, int], codec: Codec) -> None:
    first = codec.incoming(await ch.recv())
    while not first:
        chunk = await ch.recv()
        if not chunk:
            return  # the relay closed the session before any client spoke
        first = codec.incoming(chunk)
    reader, writer = await asyncio.open_connection(*target)
    log.info("target connected", extra={"fields": {"target": f"{target[0]}:{target[1]}"}})
    writer.write(first)

    async def relay_to_target() -> None:
        async for chunk in ch:
            writer.write(codec.incoming(chunk))
            await writer.drain()

    async def target_to_relay() -> None:
        while chunk := await reader.read(256 * 1024):
            await ch.send(codec.outgoing(chunk))
        await ch.send(codec.outgoing_end())

    tasks = [asyncio.create_task(relay_to_target()), asyncio.create_task(target_to_relay())]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()
    finally:
        writer.close()
        log.info("target closed", extra={"fields": {"target": f"{target[0]}:{target[1]}"}})


def run(args: argparse.Namespace) -> int:
    from ..server.relay import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            runner.run(bridge(args))
        except KeyboardInterrupt:
            pass
    return 0
