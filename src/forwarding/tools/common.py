"""What the client tools share: the connection flags, joining the relay, errors as one line."""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import time

from ..client.address import parse_address
from ..client.connection import Channel, connect
from ..client.e2e import Decryptor, Encryptor, key_from_passphrase, key_from_text
from ..client.framed import FramedChannel, connect_framed
from ..errors import Error, HandshakeRefused, HandshakeTimeout, RecversOffline


class ToolError(Error):
    """A tool's failure, said in one line: what happened, and what to do where there is something."""


def add_client_flags(
    p: argparse.ArgumentParser,
    chid_help: str,
    to: bool = True,
    wait: bool = True,
    wait_timeout: bool = True,
    hangup: bool = True,
    e2e: bool = True,
) -> None:
    """The flags every tool takes; ``wait``, ``wait_timeout`` and ``hangup`` only where they mean something."""
    p.add_argument("relay", metavar="HOST[:PORT]", help="the relay (port 8601 if not given)")
    p.add_argument("--chid", help=chid_help)
    if to:
        p.add_argument("--to", action="append", metavar="CHID", help="a receiver; repeat for several (none: broadcast)")
    if wait:
        p.add_argument("--wait", action="store_true", help="hold the handshake until every receiver is online")
    if wait_timeout:
        p.add_argument(
            "--wait-timeout",
            type=_seconds,
            metavar="SECONDS",
            help="give up waiting for the receivers after this long (default: wait until interrupted)",
        )
    if hangup:
        p.add_argument("--hangup", action="store_true", help="end the session when a receiver goes offline")
    p.add_argument(
        "--secret",
        default=os.environ.get("FORWARDING_SECRET"),
        help="the relay's secret (or set FORWARDING_SECRET)",
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--tls-ca", metavar="PEM", help="trust this CA for the relay's certificate (implies --tls)")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate, if the relay asks for one")
    p.add_argument("--tls-key", metavar="PEM", help="key for --tls-cert")
    if e2e:
        p.add_argument(
            "--e2e-key",
            default=os.environ.get("FORWARDING_E2E_KEY"),
            help="seal the payload end to end with this key (from forwarding keygen; or FORWARDING_E2E_KEY)",
        )
        p.add_argument("--passphrase", help="seal the payload end to end with a key derived from this passphrase")
    p.add_argument("-v", "--verbose", action="store_true", help="say what happens on standard error")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive, finite number of seconds")
    return value


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    try:
        ctx = ssl.create_default_context(cafile=args.tls_ca)
        if args.tls_cert:
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ToolError(f"cannot load the TLS files ({args.tls_ca or args.tls_cert}): {exc}") from None
    return ctx


def e2e_key(args: argparse.Namespace) -> bytes | None:
    if args.e2e_key and args.passphrase:
        raise ToolError("give --e2e-key or --passphrase, not both")
    if args.e2e_key:
        try:
            return key_from_text(args.e2e_key)
        except ValueError as exc:
            raise ToolError(f"{exc}; get one from forwarding keygen") from None
    if args.passphrase:
        return key_from_passphrase(args.passphrase)
    return None


async def open_channel(
    args: argparse.Namespace,
    *,
    recvers: list[str] | None = None,
    hangup: bool = False,
    framed: bool = False,
    wait: bool | None = None,
) -> Channel | FramedChannel:
    """Join the relay as the flags say; wait for the receivers for as long as ``--wait-timeout`` allows.

    The relay holds a waiting handshake for its own handshake timeout (10 s by
    default) and then refuses it; we then ask again, so the wait lasts as long
    as the user asked, and the relay's own words end it.
    """
    wait = bool(recvers) if wait is None else wait
    address = parse_address(args.relay)
    limit = getattr(args, "wait_timeout", None)
    deadline = None if limit is None else time.monotonic() + limit
    told = False
    opener = connect_framed if framed else connect
    while True:
        try:
            return await opener(
                address,
                chid=args.chid,
                recvers=recvers,
                secret=args.secret,
                tls=tls_context(args),
                wait=wait,
                hangup=hangup,
            )
        except RecversOffline as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise ToolError(f"{exc.desc} (gave up after --wait-timeout {limit:g} s)") from None
            if not told:
                say(args, f"waiting for {', '.join(recvers or [])} to come online (Ctrl-C to stop)", always=True)
                told = True
            await asyncio.sleep(0.1)  # the relay paced us with its timeout; this only guards a tiny one
        except HandshakeRefused as exc:
            raise ToolError(_refusal(args, exc)) from None
        except HandshakeTimeout:
            raise ToolError(f"no answer from the relay at {args.relay} in time; is it a forwarding relay?") from None
        except ssl.SSLError as exc:
            raise ToolError(f"TLS with {args.relay} failed: {exc.reason or exc}; check --tls-ca") from None
        except ConnectionRefusedError:
            raise ToolError(f"cannot reach the relay at {args.relay}: connection refused; is it running?") from None
        except OSError as exc:
            raise ToolError(f"cannot reach the relay at {args.relay}: {exc.strerror or exc}") from None


def _refusal(args: argparse.Namespace, exc: HandshakeRefused) -> str:
    text = f"the relay refused the handshake: {exc.desc} ({exc.code})"
    if exc.code == "bad_request" and args.secret and "not valid JSON" in exc.desc:
        return text + "; this relay has no secret: leave out --secret"
    if exc.code in ("bad_seal", "challenge_mismatch"):
        return text + "; check --secret"
    if exc.code == "chid_in_use":
        return text + "; pick another --chid"
    if exc.code == "unavailable":
        return text + "; the relay is a cluster node cut off from its registry: retry, or use another node"
    return text


class Codec:
    """Plain bytes, or end-to-end sealing in both directions."""

    def __init__(self, key: bytes | None) -> None:
        self._enc = Encryptor(key) if key else None
        self._dec = Decryptor(key) if key else None

    @property
    def sealed(self) -> bool:
        return self._dec is not None

    def outgoing(self, data: bytes) -> bytes:
        return self._enc.seal(data) if self._enc else data

    def hello(self) -> bytes:
        """The first bytes of a sealed stream: the header and an empty record (nothing without sealing)."""
        return self._enc.hello() if self._enc else b""

    @property
    def proven(self) -> bool:
        """The peer has sent at least one record that opened with our key (always true without sealing)."""
        return self._dec is None or self._dec.opened > 0

    def outgoing_end(self) -> bytes:
        return self._enc.finish() if self._enc else b""

    def incoming(self, data: bytes) -> bytes:
        return self._dec.feed(data) if self._dec else data

    @property
    def finished(self) -> bool:
        """The peer's end-to-end stream is complete (always true without sealing)."""
        return self._dec is None or self._dec.finished

    def incoming_end(self) -> None:
        if self._dec:
            self._dec.eof()


def say(args: argparse.Namespace, text: str, always: bool = False) -> None:
    if always or args.verbose:
        print(f"forwarding {args.command}: {text}", file=sys.stderr, flush=True)
