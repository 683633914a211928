"""``forwarding connect``: like nc. Standard input goes to the receivers; what arrives goes to standard output."""

from __future__ import annotations

import argparse
import io
import sys
import threading
from typing import cast

from .. import sync
from .common import Codec, e2e_key, say, tls_context


def run(args: argparse.Namespace) -> int:
    codec = Codec(e2e_key(args))
    ch = sync.connect(
        args.relay, chid=args.chid, recvers=args.to, secret=args.secret, tls=tls_context(args), wait=args.wait
    )
    say(args, f"joined as {ch.chid}" + (f"; online: {', '.join(ch.online)}" if ch.online is not None else ""),
        always=not args.chid)  # fmt: skip
    stdin = cast(io.BufferedReader, sys.stdin.buffer)  # read1: whatever is there, up to a size
    stdout = sys.stdout.buffer

    def upload() -> None:
        try:
            while chunk := stdin.read1(256 * 1024):
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
