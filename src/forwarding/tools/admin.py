"""``forwarding admin PATH sessions|close CHID|reload``: the relay's control socket (server/admin.py)."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def run(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"cmd": args.action}
    if args.action == "close":
        if not args.chid:
            raise ValueError("close needs the chid of the session to close: forwarding admin PATH close CHID")
        request["chid"] = args.chid
    reply = _ask(args.socket, request)
    if not reply.get("ok"):
        raise ValueError(str(reply.get("desc", "refused")))
    if args.json:
        print(json.dumps(reply.get("sessions", reply), indent=1))
    elif args.action == "sessions":
        _show(reply["sessions"])
    elif args.action == "reload":
        changed = ", ".join(reply.get("changed", [])) or "nothing"
        print(f"reloaded; changed: {changed}")
        if reply.get("needs_restart"):
            print(f"not changed until a restart: {', '.join(reply['needs_restart'])}")
    elif args.action == "drain":
        print(f"draining: {reply['sessions']} connections may run for up to {reply['grace']:g} s, then the relay exits")
    else:
        print(f"closed {args.chid}")
    return 0


def _ask(path: str, request: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ValueError(f"no admin socket at {path}; is the relay running with --admin-socket {path}?") from None
        except PermissionError:
            raise ValueError(f"no permission to use {path}; run as the relay's user") from None
        except ConnectionRefusedError:
            raise ValueError(f"nothing listens on {path}; the relay that made it has stopped") from None
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ValueError("the relay closed the admin connection")
            buf += chunk
    reply = json.loads(buf)
    if not isinstance(reply, dict):
        raise ValueError("the relay's answer is not a JSON object")
    return reply


def _show(sessions: list[dict[str, Any]]) -> None:
    title = f"{len(sessions)} session" + ("" if len(sessions) == 1 else "s")
    nodes = sorted({str(s["node"]) for s in sessions if "node" in s})
    if nodes:  # a cluster node: the admin socket and its sessions are per node
        title += " on node " + ", ".join(nodes)
    table = Table(title=title)
    for column in ("chid", "peer", "recvers", "mode", "in", "out", "dropped", "age s", "idle s"):
        table.add_column(column, justify="right" if column in ("in", "out", "dropped", "age s", "idle s") else "left")
    for s in sessions:
        recvers = "*" if s["recvers"] is None else ",".join(s["recvers"])
        mode = s["mode"] + (", spliced" if s.get("spliced") else "")
        table.add_row(
            s["chid"], s["peer"], recvers, mode, str(s["in"]), str(s["out"]), str(s["dropped"]),
            f"{s['age']:.0f}", f"{s['idle']:.0f}",
        )  # fmt: skip
    # Piped, a table must not be cut to 80 columns: give it the width it needs.
    console = Console() if sys.stdout.isatty() else Console(width=10_000)
    console.print(table)
