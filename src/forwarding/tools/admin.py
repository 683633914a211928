"""``forwarding admin PATH sessions|close CHID|reload``: the relay's control socket (server/admin.py)."""

from __future__ import annotations

import argparse
import json
import socket
from typing import Any

from rich.console import Console
from rich.table import Table


def run(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"cmd": args.action}
    if args.action == "close":
        if not args.chid:
            raise ValueError("close needs the chid of the session to close")
        request["chid"] = args.chid
    reply = _ask(args.socket, request)
    if not reply.get("ok"):
        raise ValueError(str(reply.get("desc", "refused")))
    if args.action == "sessions":
        _show(reply["sessions"])
    elif args.action == "reload":
        changed = ", ".join(reply.get("changed", [])) or "nothing"
        print(f"reloaded; changed: {changed}")
        if reply.get("needs_restart"):
            print(f"not changed until a restart: {', '.join(reply['needs_restart'])}")
    else:
        print(f"closed {args.chid}")
    return 0


def _ask(path: str, request: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
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
    table = Table(title=f"{len(sessions)} sessions")
    for column in ("chid", "peer", "recvers", "mode", "in", "out", "dropped", "age s", "idle s"):
        table.add_column(column, justify="right" if column in ("in", "out", "dropped", "age s", "idle s") else "left")
    for s in sessions:
        recvers = "*" if s["recvers"] is None else ",".join(s["recvers"])
        mode = s["mode"] + (", spliced" if s.get("spliced") else "")
        table.add_row(
            s["chid"], s["peer"], recvers, mode, str(s["in"]), str(s["out"]), str(s["dropped"]),
            f"{s['age']:.0f}", f"{s['idle']:.0f}",
        )  # fmt: skip
    Console().print(table)
