"""The exception tree, split by whose fault an error is."""


class McrError(Exception):
    """Root of every error MCR raises on purpose."""


class ValidationError(McrError):
    """Operator input was rejected. The message is the exact text of the control response."""


class ProtocolError(McrError):
    """A peer sent a malformed message (control client, worker or supervisor)."""


class WorkerError(McrError):
    """One of our own channels between the supervisor and a worker failed."""


class ConfigError(McrError):
    """A configuration file or command-line setting is invalid."""
