"""``forwarding bridge``: expose one local TCP service through the relay to many visitors at once.

The bridge is a *service* (docs/protocol.md, section 13): one framed session
under ``--chid`` that carries no data, only the relay's ``visit`` events. For
each visit the bridge decides, before anything reaches the target:

* a chid not on ``--allow`` (when given) is refused, and so is any visitor
  while ``--max-visitors`` are being served;
* otherwise the bridge answers with a connection of its own (``accept``),
  which the relay pairs with the visitor; with ``--e2e-key``/``--passphrase``
  the visitor must then prove the key (its first sealed record must open)
  within ``PROOF_TIMEOUT``; only then is the target dialled, one TCP
  connection per visitor, and bytes flow both ways with half-close passed
  through.

Each visitor has its own connection at both ends, so one that stalls is held
back by TCP alone and slows no one else. Memory per visitor: one read
(``READ``) in each direction plus what the two transports buffer (asyncio's
default high-water mark, 64 KiB, each way). The control session rejoins with
backoff when it drops; visitors whose connections are alive go on meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import time

from ..client.address import parse_address
from ..client.connection import Channel, connect
from ..client.framed import FramedChannel, Visit, connect_framed
from ..errors import Error, IntegrityError
from ..logs import Limited
from .common import Codec, ToolError, e2e_key, tls_context

log = logging.getLogger("forwarding.bridge")

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0
READ = 256 * 1024
PROOF_TIMEOUT = 10.0
"""Seconds a visitor has, once answered, to send a record that opens with the key."""
CONNECT_TIMEOUT = 10.0
"""Seconds to reach the target."""


class Bridge:
    def __init__(self, args: argparse.Namespace) -> None:
        try:
            host, port = parse_address(args.target, default_port=0)
        except ValueError:
            port = 0
        if not port:
            raise ToolError(f"--target needs a port ({args.target}); e.g. 127.0.0.1:22")
        self.args = args
        self.target = (host, port)
        self.key = e2e_key(args)
        self.allowed = frozenset(args.allow or ())
        if not (self.allowed or self.key or args.allow_any):
            raise ToolError(
                "no visitor would be allowed; give --allow CHID, --e2e-key or --passphrase "
                "(visitors must prove it), or --allow-any to let anyone on the relay reach the target"
            )
        self.visitors: set[asyncio.Task[None]] = set()
        # An intruder must not flood the log: 20 lines a minute, then a count.
        self._refusals = Limited(log, "visit refused")

    async def run(self) -> None:
        args = self.args
        backoff = BACKOFF_FIRST
        try:
            while True:
                try:
                    service = await connect_framed(
                        args.relay, chid=args.chid, secret=args.secret, tls=tls_context(args), service=True
                    )
                except (OSError, Error) as exc:
                    delay = backoff * random.uniform(0.8, 1.2)  # jitter: bridges restarting together spread out
                    fields = {"error": str(exc), "retry_in": round(delay, 2)}
                    log.warning("relay unavailable", extra={"fields": fields})
                    await asyncio.sleep(delay)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                backoff = BACKOFF_FIRST
                fields = {"chid": service.chid, "target": _text(self.target), "allow": self._policy()}
                log.info("service online", extra={"fields": fields})
                try:
                    await self._serve(service)
                except (OSError, Error) as exc:
                    log.warning("service session ended", extra={"fields": {"error": str(exc)}})
                finally:
                    await service.close()
        finally:
            for task in list(self.visitors):
                task.cancel()
            if self.visitors:
                await asyncio.wait(self.visitors, timeout=5)

    def _policy(self) -> str:
        parts = []
        if self.allowed:
            parts.append("chids " + ",".join(sorted(self.allowed)))
        if self.key:
            parts.append("holders of the key")
        return " and ".join(parts) or "anyone"

    async def _serve(self, service: FramedChannel) -> None:
        keepalive = asyncio.create_task(self._keepalive(service))
        try:
            async for visit in service.visits():
                reason = self._turn_away(visit)
                if reason is not None:
                    self._refusals.log(logging.WARNING, {"visitor": visit.chid, "reason": reason})
                    await service.refuse(visit.ticket, reason)
                    continue
                task = asyncio.create_task(self._visitor(visit))
                self.visitors.add(task)
                task.add_done_callback(self.visitors.discard)
            if service.closed_because is not None:
                raise service.closed_because
        finally:
            keepalive.cancel()

    async def _keepalive(self, service: FramedChannel) -> None:
        # A service with no visitors for its idle timeout would be closed by the relay.
        interval = min(300.0, (service.timeout or 3600.0) / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await service.ping()
            except (OSError, Error):
                return  # the session has ended; _serve sees it too

    def _turn_away(self, visit: Visit) -> str | None:
        if self.allowed and visit.chid not in self.allowed:
            return "not on the allow-list"
        if len(self.visitors) >= self.args.max_visitors:
            return f"busy: serving {len(self.visitors)} visitors, the limit; try again later"
        return None

    async def _visitor(self, visit: Visit) -> None:
        args = self.args
        started = time.monotonic()
        counts = [0, 0]  # bytes to the target, bytes to the visitor
        ended = "finished"
        try:
            channel = await connect(args.relay, accept=visit.ticket, secret=args.secret, tls=tls_context(args))
        except (OSError, Error) as exc:
            log.warning(
                "visit lost before it was answered", extra={"fields": {"visitor": visit.chid, "error": str(exc)}}
            )
            return
        try:
            ended = await self._pipe(channel, Codec(self.key), counts)
        except asyncio.CancelledError:
            ended = "bridge stopping"
            raise
        finally:
            await channel.close()
            fields = {
                "visitor": visit.chid,
                "seconds": round(time.monotonic() - started, 3),
                "to_target": counts[0],
                "to_visitor": counts[1],
                "ended": ended,
            }
            log.info("visit ended", extra={"fields": fields})

    async def _pipe(self, channel: Channel, codec: Codec, counts: list[int]) -> str:
        """Prove, dial, then bytes both ways until both have ended; says how it ended."""
        first = b""
        if codec.sealed:
            try:
                first = await asyncio.wait_for(_proof(channel, codec), PROOF_TIMEOUT)
            except TimeoutError:
                return f"no key proof within {PROOF_TIMEOUT:g} s; target not dialled"
            except IntegrityError as exc:
                return f"failed the key proof ({exc}); target not dialled"
            except ConnectionError:
                return "left before proving the key; target not dialled"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.target, limit=READ), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            return f"cannot reach the target {_text(self.target)}: {getattr(exc, 'strerror', None) or exc or 'timeout'}"
        writer.write(first)
        counts[0] += len(first)

        async def to_target() -> None:
            while chunk := await channel.recv(READ):  # 256 KiB, not the default 64: a quarter of the rounds
                data = codec.incoming(chunk)
                writer.write(data)
                counts[0] += len(data)
                await writer.drain()
            codec.incoming_end()  # a sealed stream must have ended properly
            if writer.can_write_eof():
                writer.write_eof()

        async def to_visitor() -> None:
            while chunk := await reader.read(READ):
                await channel.send(codec.outgoing(chunk))
                counts[1] += len(chunk)
            await channel.send(codec.outgoing_end())
            await channel.send_eof()

        tasks = [asyncio.create_task(to_target()), asyncio.create_task(to_visitor())]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:
                task.cancel()
            for task in done:
                failure = task.exception()
                if failure is not None:
                    direction = "visitor to target" if task is tasks[0] else "target to visitor"
                    return f"{direction} failed: {failure or type(failure).__name__}"
            return "finished"
        finally:
            writer.close()


async def _proof(channel: Channel, codec: Codec) -> bytes:
    """Read until a record opens with the key; the plaintext so far (usually empty)."""
    got = b""
    while not codec.proven:
        chunk = await channel.recv(READ)
        if not chunk:
            raise ConnectionError("the visitor left")
        got += codec.incoming(chunk)
    return got


def _text(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def run(args: argparse.Namespace) -> int:
    from ..server.relay import loop_factory

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        runner = Bridge(args)
        try:
            await runner.run()
        except asyncio.CancelledError:
            log.info("stopping", extra={"fields": {"visitors": len(runner.visitors)}})

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main())
    return 0
