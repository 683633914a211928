"""systemd's readiness protocol (sd_notify), without libsystemd: one datagram per state.

With ``Type=notify`` (deploy/forwarding.service) systemd passes ``NOTIFY_SOCKET``
and waits for ``READY=1``: the relay sends it once its listeners are up, so
units ordered after it start against a relay that accepts. Without the
variable (not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd; False when there is no one to tell."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True
