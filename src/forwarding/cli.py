"""The ``forwarding`` command: parses flags into a config and hands over. Thin on purpose."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tomllib
from collections.abc import Sequence

from . import __version__, logs
from .config import NODE_ID, ClusterSettings, Mode, ServerConfig
from .protocol.frames import MIN_MAX_FRAME
from .protocol.handshake import HandshakeLimits
from .protocol.sealing import new_secret
from .server.admission import AdmissionLimits
from .server.quotas import PERIODS, QuotaLimits


def _positive(text: str) -> float:
    """Seconds: a finite positive number (hs4 carries timeouts as JSON, which has no infinity)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, got {text}")
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


def _size_or_none(text: str) -> int:
    """A byte count as :func:`_size`, or 0 for none."""
    return 0 if text.strip() == "0" else _size(text)


def _listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT; the port is required."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text}")
    return host.strip("[]"), int(port)


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    d = ServerConfig()
    lim = HandshakeLimits()
    p = sub.add_parser("serve", help="run the relay", description="Run the relay server.")
    p.add_argument("--config", metavar="FILE", help="TOML file of settings named like these flags")
    p.add_argument("--host", action="append", help="address to listen on; repeat for several (default 0.0.0.0)")
    p.add_argument("--port", type=_port, default=d.port, help=f"TCP port, 0 for any free one (default {d.port})")
    p.add_argument(
        "--ws-port",
        type=_port,
        metavar="PORT",
        help="also listen for WebSocket sessions and serve the web client here (wss:// with --tls-cert); 0: any",
    )
    p.add_argument(
        "--ws-allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin (e.g. https://app.example) besides the relay's own that may connect; * for any",
    )
    p.add_argument(
        "--ws-ping-interval",
        type=float,
        default=d.ws_ping_interval,
        metavar="SECONDS",
        help=f"ping WebSocket clients this often; no pong by the next ping ends the session; 0: never "
        f"(default {d.ws_ping_interval:g})",
    )
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
        "--frame-timeout",
        type=_positive,
        default=d.frame_timeout,
        metavar="SECONDS",
        help=f"close a framed session that leaves a frame incomplete this long (default {d.frame_timeout:g})",
    )
    p.add_argument(
        "--close-timeout",
        type=_positive,
        default=d.close_timeout,
        metavar="SECONDS",
        help=f"cut a closing connection that has not flushed and answered FIN by then (default {d.close_timeout:g})",
    )
    p.add_argument(
        "--half-close-timeout",
        type=_positive,
        default=d.half_close_timeout,
        metavar="SECONDS",
        help=f"idle timeout once a client has sent FIN (default {d.half_close_timeout:g})",
    )
    p.add_argument(
        "--max-waiting-visits",
        type=int,
        default=d.max_waiting_visits,
        metavar="N",
        help=f"visits one service may leave unanswered at once; more are refused (default {d.max_waiting_visits})",
    )
    p.add_argument(
        "--max-frame",
        type=_size,
        default=lim.max_frame,
        metavar="BYTES",
        help=f"largest frame payload in framed mode, announced in hs4; at least 64K (default {lim.max_frame})",
    )
    p.add_argument(
        "--metrics",
        type=_listen_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9601)",
    )
    p.add_argument(
        "--admin-socket",
        metavar="PATH",
        help="Unix socket for `forwarding admin` (list and close sessions, reload); mode 0600",
    )
    p.add_argument(
        "--no-splice",
        dest="splice",
        action="store_false",
        help="forward one-to-one sessions through Python instead of splice(2) (for comparison)",
    )
    p.add_argument(
        "--splice-after",
        type=_size,
        default=d.splice_after,
        metavar="BYTES",
        help=f"splice a one-to-one session after one read of this many bytes; 1 = at once (default {d.splice_after})",
    )
    p.add_argument(
        "--shutdown-grace",
        type=_positive,
        default=d.shutdown_grace,
        metavar="SECONDS",
        help=f"on SIGTERM, how long to let queued bytes drain (default {d.shutdown_grace:g})",
    )
    p.add_argument(
        "--drain-grace",
        type=_positive,
        default=d.drain_grace,
        metavar="SECONDS",
        help=f"on SIGUSR2 or admin drain: stop accepting, let sessions run this long, then exit "
        f"(default {d.drain_grace:g})",
    )
    p.add_argument(
        "--secret",
        default=os.environ.get("FORWARDING_SECRET"),
        help="seal every handshake line with this secret (or set FORWARDING_SECRET, or use --config)",
    )
    _add_cluster_flags(p)
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    p.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert")
    p.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA")
    a = d.admission
    p.add_argument(
        "--max-connections",
        type=int,
        default=a.max_connections,
        metavar="N",
        help=f"open connections in all (default {a.max_connections})",
    )
    p.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=a.max_connections_per_ip,
        metavar="N",
        help=f"open connections per source address, per /64 for IPv6 (default {a.max_connections_per_ip})",
    )
    p.add_argument(
        "--handshake-rate",
        type=_positive,
        default=a.handshake_rate,
        metavar="PER_SECOND",
        help=f"new connections per second per source address (default {a.handshake_rate:g})",
    )
    p.add_argument(
        "--handshake-burst",
        type=int,
        default=a.handshake_burst,
        metavar="N",
        help=f"new connections a source may open at once (default {a.handshake_burst})",
    )
    q = d.quotas
    p.add_argument(
        "--rate-per-session",
        type=_size_or_none,
        default=q.session_rate,
        metavar="BYTES",
        help="bytes per second one session may send, e.g. 10M; it is paced, nothing is lost (default 0: no cap)",
    )
    p.add_argument(
        "--rate-per-ip",
        type=_size_or_none,
        default=q.ip_rate,
        metavar="BYTES",
        help="bytes per second the sessions of one source address (an IPv6 /64) may send in all (default 0: no cap)",
    )
    p.add_argument(
        "--quota-per-chid",
        type=_size_or_none,
        default=q.chid_quota,
        metavar="BYTES",
        help="bytes one chid may send per --quota-period, e.g. 10G; then its session ends (default 0: no quota)",
    )
    p.add_argument(
        "--quota-per-ip",
        type=_size_or_none,
        default=q.ip_quota,
        metavar="BYTES",
        help="bytes one source address may send per --quota-period, all its sessions together (default 0: no quota)",
    )
    p.add_argument(
        "--quota-period",
        choices=sorted(PERIODS),
        default=q.period,
        help=f"quotas start afresh every UTC hour or day (default {q.period})",
    )
    p.add_argument(
        "--quota-max-tracked",
        type=_count,
        default=q.max_tracked,
        metavar="N",
        help=f"chids, and addresses, whose use the relay remembers per period; past it the idle ones that "
        f"sent least are forgotten (default {q.max_tracked})",
    )
    p.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "uvloop", "asyncio"],
        help="event loop: uvloop when installed (auto), or force one",
    )
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="least severe line logged"
    )
    p.add_argument(
        "--log-format", default="text", choices=logs.FORMATS, help="text: key=value lines; json: one object a line"
    )
    p.add_argument(
        "--no-malloc-tuning",
        dest="malloc_tuning",
        action="store_false",
        help="leave glibc's malloc at its defaults (the tuning saves CPU on TLS for a few MiB of memory)",
    )
    p.add_argument(
        "--status-token",
        metavar="TOKEN",
        help="require this token (?token= or Authorization: Bearer) for /status and /api/sessions on --metrics",
    )
    p.add_argument("--log-file", metavar="PATH", help="log to this file instead of standard error; SIGUSR1 reopens it")
    p.add_argument(
        "--blur-addresses",
        action="store_true",
        help="show peers in logs and admin output as their /24 (IPv4) or /48 (IPv6), not the exact address",
    )
    return p


def _workers(text: str) -> int:
    if text == "auto":
        return os.cpu_count() or 1
    return _count(text)


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    c = ClusterSettings(servers=(), secret="")
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="N processes on one port as a cluster of N nodes; auto: one per core (default 1). Without "
        "--cluster they share a nats-server of their own",
    )
    p.add_argument(
        "--no-handoff",
        dest="handoff",
        action="store_false",
        help="with --workers: never hand a connection to the worker that holds its one receiver "
        "(its pair then crosses workers on a leg)",
    )
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind the client port with SO_REUSEPORT, to share it with other relay processes",
    )
    p.add_argument(
        "--cluster",
        metavar="URL[,URL...]",
        help="be one node of a cluster whose registry is this NATS JetStream (nats://host:4222,...)",
    )
    p.add_argument(
        "--cluster-listen",
        type=_listen_address,
        default=c.listen,
        metavar="HOST:PORT",
        help="accept node-to-node legs here (default 127.0.0.1:0, for nodes on one host)",
    )
    p.add_argument(
        "--cluster-advertise",
        metavar="HOST:PORT",
        help="the address other nodes dial for legs (default: the bound --cluster-listen address)",
    )
    p.add_argument(
        "--cluster-secret",
        default=os.environ.get("FORWARDING_CLUSTER_SECRET"),
        help="shared by every node; seals leg headers (or set FORWARDING_CLUSTER_SECRET, or use --config)",
    )
    p.add_argument(
        "--node-id", metavar="ID", help="this node's id, unique in the cluster (default: host name + random)"
    )
    p.add_argument(
        "--cluster-replicas",
        type=_count,
        default=c.replicas,
        metavar="N",
        help=f"copies of the registry in NATS: 3 for a 3-server NATS cluster (default {c.replicas})",
    )
    p.add_argument(
        "--lease-ttl",
        type=_positive,
        default=c.lease_ttl,
        metavar="SECONDS",
        help=f"a crashed node's chids are free after about this long (default {c.lease_ttl:g})",
    )
    p.add_argument("--cluster-creds", metavar="FILE", help="NATS credentials file")
    p.add_argument("--cluster-ca", metavar="PEM", help="CA bundle for tls:// NATS servers")
    p.add_argument(
        "--cluster-memory",
        action="store_true",
        help="keep the registry's buckets in memory, not on file (nodes of one host that start together)",
    )


def _cluster_settings(args: argparse.Namespace) -> ClusterSettings | None:
    if not args.cluster:
        return None
    if not args.cluster_secret:
        raise SystemExit("forwarding serve: --cluster needs --cluster-secret (the same on every node)")
    if args.node_id and not NODE_ID.fullmatch(args.node_id):
        raise SystemExit("forwarding serve: --node-id takes 1 to 64 letters, digits, '-' and '_'")
    if args.cluster_advertise:
        _listen_address(args.cluster_advertise)
    return ClusterSettings(
        servers=tuple(url.strip() for url in args.cluster.split(",") if url.strip()),
        secret=args.cluster_secret,
        listen=args.cluster_listen,
        advertise=args.cluster_advertise,
        node=args.node_id or "",
        replicas=args.cluster_replicas,
        memory=args.cluster_memory,
        lease_ttl=args.lease_ttl,
        creds=args.cluster_creds,
        tls_ca=args.cluster_ca,
    )


def _serve_config(args: argparse.Namespace) -> ServerConfig:
    if args.write_buffer_low > args.write_buffer_high:
        raise SystemExit("forwarding serve: --write-buffer-low must not exceed --write-buffer-high")
    limits = HandshakeLimits(
        handshake_timeout=args.handshake_timeout,
        max_line=args.max_handshake_line,
        default_idle_timeout=min(args.idle_timeout, args.max_idle_timeout),
        max_idle_timeout=args.max_idle_timeout,
        max_frame=args.max_frame,
    )
    if args.max_frame < MIN_MAX_FRAME:
        raise SystemExit(f"forwarding serve: --max-frame must be at least {MIN_MAX_FRAME}")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("forwarding serve: --tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise SystemExit("forwarding serve: --tls-client-ca needs --tls-cert and --tls-key")
    admission = AdmissionLimits(
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_connections_per_ip,
        handshake_rate=args.handshake_rate,
        handshake_burst=args.handshake_burst,
    )
    quotas = QuotaLimits(
        session_rate=args.rate_per_session,
        ip_rate=args.rate_per_ip,
        chid_quota=args.quota_per_chid,
        ip_quota=args.quota_per_ip,
        period=args.quota_period,
        max_tracked=args.quota_max_tracked,
    )
    return ServerConfig(
        hosts=tuple(args.host or ServerConfig().hosts),
        admission=admission,
        quotas=quotas,
        secret=args.secret or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        port=args.port,
        ws_port=args.ws_port,
        ws_allow_origins=tuple(args.ws_allow_origin),
        ws_ping_interval=args.ws_ping_interval,
        mode=Mode(args.mode),
        limits=limits,
        write_buffer_high=args.write_buffer_high,
        write_buffer_low=args.write_buffer_low,
        slow_receiver_timeout=args.slow_receiver_timeout,
        half_close_timeout=args.half_close_timeout,
        max_waiting_visits=args.max_waiting_visits,
        close_timeout=args.close_timeout,
        frame_timeout=args.frame_timeout,
        shutdown_grace=args.shutdown_grace,
        drain_grace=args.drain_grace,
        splice=args.splice,
        splice_after=args.splice_after,
        admin_socket=args.admin_socket,
        blur_addresses=args.blur_addresses,
        malloc_tuning=args.malloc_tuning,
        status_token=args.status_token,
        metrics=args.metrics,
        cluster=_cluster_settings(args),
        reuse_port=args.reuse_port,
        workers=args.workers,
        handoff=args.handoff,
    )


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        prog="forwarding", description="A TCP relay: clients join by chid and talk through it."
    )
    parser.add_argument("--version", action="version", version=f"forwarding {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = _add_serve(sub)
    sub.add_parser(
        "keygen",
        help="print a new random secret or end-to-end key (256 bits)",
        description="Print 256 random bits from the operating system, URL-safe base64: a --secret for the "
        "relay or an --e2e-key for the tools.",
    )
    _add_tools(sub)
    return parser, serve


def _add_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .tools.common import add_client_flags

    p = sub.add_parser(
        "connect",
        help="like nc: standard input to the receivers, what arrives to standard output",
        description="Join the relay; standard input goes to the receivers and what arrives goes to "
        "standard output. The end of standard input ends our sending side (like nc -N) and what arrives "
        "is still printed until every sender has finished. Exits 0 then, 1 on an error.",
    )
    add_client_flags(p, "this session's chid (default: generated, and printed on standard error)")
    p.add_argument(
        "-q",
        dest="quit_after",
        type=_seconds,
        metavar="SECONDS",
        help="quit this long after the end of standard input, even if the peer has not finished",
    )
    p.add_argument("-d", "--no-stdin", action="store_true", help="do not read standard input: receive only")
    p = sub.add_parser(
        "bridge",
        help="expose a local TCP service through the relay to many visitors at once",
        description="Offer --target as a service under --chid: every visitor (forwarding connect RELAY --to "
        "CHID) gets its own connection to the target, once allowed. Give --allow CHID, --e2e-key/--passphrase "
        "(visitors must prove the key before the target is dialled), or --allow-any.",
    )
    add_client_flags(
        p, "the chid visitors reach this bridge at", to=False, wait=False, wait_timeout=False, hangup=False
    )
    p.add_argument("--target", required=True, metavar="HOST:PORT", help="the local service, e.g. 127.0.0.1:22")
    p.add_argument("--allow", action="append", metavar="CHID", help="a visitor chid that may visit; repeat for several")
    p.add_argument(
        "--allow-any", action="store_true", help="let any client of the relay visit (with no --allow and no key)"
    )
    p.add_argument(
        "--max-visitors",
        type=_count,
        default=64,
        metavar="N",
        help="visitors served at once; more are refused (default 64)",
    )
    p = sub.add_parser(
        "send",
        help="send a file to a receiver; exits 0 only once the receiver has confirmed it",
        description="Send one file to --to, waiting until it is online. The receiver checks the size and "
        "SHA-256 and confirms back; send exits 0 only then, and otherwise says what happened and exits 1.",
    )
    add_client_flags(p, "this sender's chid (default: generated)", wait=False, hangup=False)
    p.add_argument("file", help="the file to send")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = sub.add_parser(
        "recv",
        help="receive one file sent with forwarding send, and confirm it to the sender",
        description="Wait as --chid for one file from forwarding send, check its size and SHA-256, move it "
        "into place and confirm to the sender. Never overwrites a file unless told to.",
    )
    add_client_flags(p, "the chid the sender sends to", to=False, wait=False, wait_timeout=False, hangup=False)
    p.add_argument("-o", "--output", help="where to write it (default: the sender's file name, as a plain name "
                   "in this directory; - for standard output)")  # fmt: skip
    p.add_argument("--from", dest="sender", metavar="CHID", help="accept the file only from this sender")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    p.add_argument("--keep-partial", action="store_true", help="keep NAME.part when a transfer fails")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = sub.add_parser(
        "chat",
        help="a terminal group chat (framed mode): who said what, who comes and goes",
        description="Join the relay in framed mode: each line you type goes to --to (or everyone), "
        "each message arrives with its sender, and peers joining and leaving are announced.",
    )
    add_client_flags(p, "your name in the chat (default: generated)", wait=False, wait_timeout=False, e2e=False)
    p = sub.add_parser(
        "admin",
        help="talk to a running relay's --admin-socket: sessions, close CHID, reload, drain",
        description="List a running relay's sessions, close one, or make it re-read its configuration.",
    )
    p.add_argument("socket", metavar="PATH", help="the relay's --admin-socket")
    p.add_argument("action", choices=["sessions", "close", "reload", "drain"], help="what to do")
    p.add_argument("chid", nargs="?", help="for close: the session to close")
    p.add_argument("--json", action="store_true", help="print the relay's answer as JSON, for scripts")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least 1")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is out of range: 1-65535, or 0 for any free port")
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of seconds, 0 or more")
    return value


def _apply_config_file(serve: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """``serve --config FILE``: TOML keys named like the flags become their defaults.

    Flags on the command line still win. The file keeps the secret out of ``ps``.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    try:
        with open(known.config, "rb") as f:
            table = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"forwarding: cannot read config {known.config}: {exc}") from None
    actions = {a.dest: a for a in serve._actions}
    defaults = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        if dest not in actions or dest in ("help", "config"):
            raise SystemExit(f"forwarding: unknown setting {key!r} in {known.config}")
        if dest == "host" and isinstance(value, str):
            value = [value]
        elif actions[dest].type is not None and isinstance(value, int | float) and not isinstance(value, bool):
            # argparse converts string defaults with the flag's type (and its checks);
            # TOML numbers would bypass both.
            value = str(value)
        defaults[dest] = value
    serve.set_defaults(**defaults)


def _run_tool(args: argparse.Namespace) -> int:
    from .errors import Error
    from .tools import admin, bridge, chat, pipe, transfer

    if args.command == "bridge":  # a daemon: one line per visitor, and what went wrong
        logs.configure("debug" if args.verbose else "info")
    runners = {
        "connect": pipe.run,
        "bridge": bridge.run,
        "send": transfer.run_send,
        "recv": transfer.run_recv,
        "chat": chat.run,
        "admin": admin.run,
    }
    try:
        return runners[args.command](args)
    except (Error, ValueError) as exc:
        print(f"forwarding {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or socket the tool was given: say which
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"forwarding {args.command}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"forwarding {args.command}: interrupted", file=sys.stderr)
        return 130


def _reread(argv: Sequence[str] | None) -> ServerConfig:
    """The configuration as the command line and the --config file say now (reload, SIGHUP)."""
    parser, serve = _parser()
    try:
        _apply_config_file(serve, argv)
        return _serve_config(parser.parse_args(argv))
    except SystemExit as exc:  # a broken file is reported, not fatal, on reload
        raise ValueError(str(exc.code)) from None


def main(argv: Sequence[str] | None = None) -> None:
    parser, serve = _parser()
    _apply_config_file(serve, argv)
    args = parser.parse_args(argv)
    if args.command == "keygen":
        print(new_secret())
    elif args.command in ("connect", "bridge", "send", "recv", "chat", "admin"):
        sys.exit(_run_tool(args))
    elif args.command == "serve":
        config = _serve_config(args)
        try:
            logs.configure(args.log_level, args.log_format, args.log_file)
        except OSError as exc:
            print(f"forwarding serve: cannot open the log file: {exc}", file=sys.stderr)
            sys.exit(1)
        if node := os.environ.get("FORWARDING_LOG_NODE"):  # a worker of `serve --workers`
            logs.tag(node=node)
        if config.workers > 1:
            from .server.workers import supervise

            serve_args = list(sys.argv[1:] if argv is None else argv)
            try:
                sys.exit(supervise(serve_args[serve_args.index("serve") + 1 :], config))
            except OSError as exc:
                print(f"forwarding serve: cannot start: {exc}", file=sys.stderr)
                sys.exit(1)
        from .server.relay import run

        try:
            run(config, args.loop, reloader=lambda: _reread(argv))
        except OSError as exc:  # at start: a port or the admin socket in use, an address not ours
            print(f"forwarding serve: cannot start: {exc}", file=sys.stderr)
            sys.exit(1)
    else:  # pragma: no cover - argparse rejects unknown commands
        sys.exit(2)
