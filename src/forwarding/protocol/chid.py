"""Channel ids: what a valid one looks like, and how the server makes one up.

docs/protocol.md, "Channel ids", is the contract this module implements.
"""

from __future__ import annotations

import base64
import os

MAX_CHID_LENGTH = 128
"""Longest chid accepted, in characters (Unicode code points)."""

GENERATED_CHID_BYTES = 16
"""Randomness in a generated chid: 128 bits, so a chid cannot be guessed."""


def generate_chid() -> str:
    """A fresh chid: 22 URL-safe base64 characters carrying 128 random bits.

    What ``secrets.token_urlsafe`` does, from the same source (``os.urandom``),
    without its two Python calls: this runs once per handshake.
    """
    return base64.urlsafe_b64encode(os.urandom(GENERATED_CHID_BYTES)).rstrip(b"=").decode("ascii")


def chid_problem(chid: str) -> str | None:
    """Say what is wrong with ``chid``, or return ``None`` if it is valid.

    A valid chid has 1 to :data:`MAX_CHID_LENGTH` characters, each printable in
    the sense of :meth:`str.isprintable` (no control, format, separator,
    surrogate, private-use or unassigned code points) and none a space. Those
    rules keep chids safe to log and to put in a terminal, a URL or a metric.
    """
    if not chid:
        return "chid must not be empty"
    if len(chid) > MAX_CHID_LENGTH:
        return f"chid is {len(chid)} characters long, the limit is {MAX_CHID_LENGTH}"
    if not chid.isprintable() or " " in chid:
        return "chid must not contain spaces, control or other non-printable characters"
    return None
