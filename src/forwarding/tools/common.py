"""What the client tools share: the connection flags and turning them into a channel."""

from __future__ import annotations

import argparse
import os
import ssl
import sys

from ..client.e2e import Decryptor, Encryptor, key_from_passphrase, key_from_text


def add_client_flags(p: argparse.ArgumentParser, chid_help: str, to: bool = True) -> None:
    p.add_argument("relay", metavar="HOST[:PORT]", help="the relay (port 8601 if not given)")
    p.add_argument("--chid", help=chid_help)
    if to:
        p.add_argument("--to", action="append", metavar="CHID", help="a receiver; repeat for several (none: broadcast)")
    p.add_argument("--wait", action="store_true", help="hold the handshake until every receiver is online")
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
    p.add_argument(
        "--e2e-key",
        default=os.environ.get("FORWARDING_E2E_KEY"),
        help="seal the payload end to end with this key (from forwarding keygen; or FORWARDING_E2E_KEY)",
    )
    p.add_argument("--passphrase", help="seal the payload end to end with a key derived from this passphrase")
    p.add_argument("-v", "--verbose", action="store_true", help="say what happens on standard error")


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=args.tls_ca)
    if args.tls_cert:
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    return ctx


def e2e_key(args: argparse.Namespace) -> bytes | None:
    if args.e2e_key and args.passphrase:
        raise SystemExit("forwarding: give --e2e-key or --passphrase, not both")
    if args.e2e_key:
        try:
            return key_from_text(args.e2e_key)
        except ValueError as exc:
            raise SystemExit(f"forwarding: {exc}") from None
    if args.passphrase:
        return key_from_passphrase(args.passphrase)
    return None


class Codec:
    """Plain bytes, or end-to-end sealing in both directions."""

    def __init__(self, key: bytes | None) -> None:
        self._enc = Encryptor(key) if key else None
        self._dec = Decryptor(key) if key else None

    def outgoing(self, data: bytes) -> bytes:
        return self._enc.seal(data) if self._enc else data

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
        print(f"forwarding: {text}", file=sys.stderr, flush=True)
