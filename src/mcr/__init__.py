"""MCR: a Linux multicast relay that captures at layer 2 and republishes UDP payloads."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
