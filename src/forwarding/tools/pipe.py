"""``forwarding connect``: like nc. Standard input goes to the receivers; what arrives goes to standard output."""

from __future__ import annotations

import argparse
import os
import sys
import threading

from .. import sync
from .common import Codec, e2e_key, say, tls_context


def run(args: argparse.Namespace) -> int:
    codec = Codec(e2e_key(args))
    ch = sync.connect(
        args.relay,
        chid=args.chid,
        recvers=args.to,
        secret=args.secret,
        tls=tls_context(args),
        wait=args.wait,
        hangup=args.hangup,
    )
    say(args, f"joined as {ch.chid}" + (f"; online: {', '.join(ch.online)}" if ch.online is not None else ""),
        always=not args.chid)  # fmt: skip
    stdin_fd = sys.stdin.fileno()
    stdout = sys.stdout.buffer

    def upload() -> None:
        try:
            # os.read, not sys.stdin: a daemon thread blocked inside a buffered
            # reader's lock makes interpreter shutdown abort.
            while chunk := os.read(stdin_fd, 256 * 1024):
                ch.send(codec.outgoing(chunk))
            ch.send(codec.outgoing_end())
            ch.send_eof()  # the relay delivers what we sent, then ends the session
        except OSError:
            pass  # the relay side closed; the main thread reports it

    threading.Thread(target=upload, daemon=True).start()
    for chunk in ch:
        data = codec.incoming(chunk)
        if data:
            stdout.write(data)
            stdout.flush()
    ch.close()
    return 0
