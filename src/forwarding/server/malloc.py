"""glibc malloc settings for a relay: keep the heap instead of mapping and unmapping it per buffer.

Measured (docs/performance.md, "What was tried"; ../design/browser.md "TLS
cost"): with glibc's defaults a TLS stream grows and trims the heap top about
12,000 times per GiB and the kernel zeroes fresh pages each time; with these
three settings the relay's CPU per GiB of TLS fell by about 40%, for a few MiB
more resident memory. The same as the ``MALLOC_*_`` environment variables,
which win when set. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("forwarding.malloc")

# mallopt(3) parameters and values: (name, environment variable, value).
SETTINGS = (
    (-1, "MALLOC_TRIM_THRESHOLD_", 64 << 20),  # M_TRIM_THRESHOLD: give memory back past 64 MiB free at the top
    (-2, "MALLOC_TOP_PAD_", 16 << 20),  # M_TOP_PAD: grow the heap 16 MiB at a time
    (-3, "MALLOC_MMAP_THRESHOLD_", 16 << 20),  # M_MMAP_THRESHOLD: 256-KiB buffers from the heap, not mmap
)


def tune() -> bool:
    """Apply :data:`SETTINGS` where the environment does not say otherwise; False if not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    applied = {}
    for param, env, value in SETTINGS:
        if env not in os.environ and mallopt(param, value) == 1:
            applied[env.strip("_").lower()] = value
    log.debug("malloc tuned", extra={"fields": applied})
    return True
