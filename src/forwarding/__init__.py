"""forwarding: a TCP relay. Clients join with a chid, name their receivers, and talk through it."""

__version__ = "0.1.0"
