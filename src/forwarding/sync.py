"""The blocking client: ``forwarding.sync.connect(...)``."""

from .client.sync import SyncChannel, connect

__all__ = ["SyncChannel", "connect"]
