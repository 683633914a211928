"""``HOST[:PORT]`` parsing, IPv6 in brackets."""

from __future__ import annotations

DEFAULT_PORT = 8601


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``relay.example``, ``relay.example:9000``, ``[::1]:9000``, ``::1`` -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"port {number} in {text!r} is out of range (1-65535)")
    return host, number
