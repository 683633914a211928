"""The ``forwarding`` command: parses flags into a config and hands over. Thin on purpose."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__, logs
from .config import Mode, ServerConfig
from .protocol.handshake import HandshakeLimits


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _size(text: str) -> int:
    """A byte count, optionally with a K, M or G suffix (powers of 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    scale = units.get(text[-1:].lower(), 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = ServerConfig()
    lim = HandshakeLimits()
    p = sub.add_parser("serve", help="run the relay", description="Run the relay server.")
    p.add_argument("--host", action="append", help="address to listen on; repeat for several (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=d.port, help=f"TCP port, 0 for any free one (default {d.port})")
    p.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default=d.mode.value,
        help="handshake: clients do the JSON handshake; broadcast: no handshake, all to all",
    )
    p.add_argument(
        "--handshake-timeout",
        type=_positive,
        default=lim.handshake_timeout,
        metavar="SECONDS",
        help=f"close connections that have not finished the handshake (default {lim.handshake_timeout:g})",
    )
    p.add_argument(
        "--idle-timeout",
        type=_positive,
        default=lim.default_idle_timeout,
        metavar="SECONDS",
        help=f"idle timeout for sessions whose hs3 names none (default {lim.default_idle_timeout:g})",
    )
    p.add_argument(
        "--max-idle-timeout",
        type=_positive,
        default=lim.max_idle_timeout,
        metavar="SECONDS",
        help=f"largest idle timeout a client may ask for (default {lim.max_idle_timeout:g})",
    )
    p.add_argument(
        "--max-handshake-line",
        type=_size,
        default=lim.max_line,
        metavar="BYTES",
        help=f"longest handshake line (default {lim.max_line})",
    )
    p.add_argument(
        "--write-buffer-high",
        type=_size,
        default=d.write_buffer_high,
        metavar="BYTES",
        help=f"queued bytes per client above which its senders pause (default {d.write_buffer_high})",
    )
    p.add_argument(
        "--write-buffer-low",
        type=_size,
        default=d.write_buffer_low,
        metavar="BYTES",
        help=f"queued bytes per client below which its senders resume (default {d.write_buffer_low})",
    )
    p.add_argument(
        "--slow-receiver-timeout",
        type=_positive,
        default=d.slow_receiver_timeout,
        metavar="SECONDS",
        help=f"disconnect a client that stays above the high mark this long (default {d.slow_receiver_timeout:g})",
    )
    p.add_argument(
        "--shutdown-grace",
        type=_positive,
        default=d.shutdown_grace,
        metavar="SECONDS",
        help=f"on SIGTERM, how long to let queued bytes drain (default {d.shutdown_grace:g})",
    )
    p.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "uvloop", "asyncio"],
        help="event loop: uvloop when installed (auto), or force one",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=logs.FORMATS)


def _serve_config(args: argparse.Namespace) -> ServerConfig:
    if args.write_buffer_low > args.write_buffer_high:
        raise SystemExit("forwarding serve: --write-buffer-low must not exceed --write-buffer-high")
    limits = HandshakeLimits(
        handshake_timeout=args.handshake_timeout,
        max_line=args.max_handshake_line,
        default_idle_timeout=min(args.idle_timeout, args.max_idle_timeout),
        max_idle_timeout=args.max_idle_timeout,
    )
    return ServerConfig(
        hosts=tuple(args.host or ServerConfig().hosts),
        port=args.port,
        mode=Mode(args.mode),
        limits=limits,
        write_buffer_high=args.write_buffer_high,
        write_buffer_low=args.write_buffer_low,
        slow_receiver_timeout=args.slow_receiver_timeout,
        shutdown_grace=args.shutdown_grace,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forwarding", description="A TCP relay: clients join by chid and talk through it."
    )
    parser.add_argument("--version", action="version", version=f"forwarding {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        config = _serve_config(args)
        logs.configure(args.log_level, args.log_format)
        from .server.relay import run

        run(config, args.loop)
    else:  # pragma: no cover - argparse rejects unknown commands
        sys.exit(2)
