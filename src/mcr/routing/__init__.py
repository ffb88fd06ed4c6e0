"""Multicast routing protocols (PIM-SM, MSDP): pure wire codecs and state machines, time passed in.

The sockets that carry them live in the supervisor (`mcr.supervisor.pim`); nothing here does I/O.
"""
