"""Log severities and facilities, with the original MCR's names and the mapping onto `logging`."""

from __future__ import annotations

import logging
from enum import Enum, IntEnum

from mcr.model.errors import ValidationError

TRACE = 5
NOTICE = 25


class Severity(IntEnum):
    """Syslog-style severities; JSON uses the member names (``"Warning"``)."""

    Emergency = 0
    Alert = 1
    Critical = 2
    Error = 3
    Warning = 4
    Notice = 5
    Info = 6
    Debug = 7
    Trace = 8

    @property
    def python_level(self) -> int:
        return _PYTHON_LEVELS[self]

    @classmethod
    def parse(cls, text: str) -> Severity:
        """Parse a level name case-insensitively, accepting the original CLI's aliases."""
        found = _ALIASES.get(text.strip().lower())
        if found is None:
            names = ", ".join(m.name.lower() for m in cls)
            raise ValidationError(f"invalid log level '{text}'; expected one of {names}")
        return found

    @classmethod
    def from_python(cls, level: int) -> Severity:
        best = Severity.Info
        for sev in cls:
            if sev.python_level <= level:
                best = sev
                break
        return best


_PYTHON_LEVELS = {
    Severity.Emergency: logging.CRITICAL + 10,
    Severity.Alert: logging.CRITICAL + 5,
    Severity.Critical: logging.CRITICAL,
    Severity.Error: logging.ERROR,
    Severity.Warning: logging.WARNING,
    Severity.Notice: NOTICE,
    Severity.Info: logging.INFO,
    Severity.Debug: logging.DEBUG,
    Severity.Trace: TRACE,
}

_ALIASES: dict[str, Severity] = {
    **{m.name.lower(): m for m in Severity},
    "emerg": Severity.Emergency,
    "crit": Severity.Critical,
    "err": Severity.Error,
    "warn": Severity.Warning,
    "informational": Severity.Info,
}


class Facility(Enum):
    """Log facilities of the original, each mapped onto one of our logger names."""

    Supervisor = "mcr.supervisor"
    RuleDispatch = "mcr.supervisor.dispatch"
    ControlSocket = "mcr.supervisor.control"
    ControlPlane = "mcr.controlplane"
    DataPlane = "mcr.worker"
    Ingress = "mcr.worker.ingress"
    Egress = "mcr.worker.egress"
    BufferPool = "mcr.worker.buffers"
    PacketParser = "mcr.packet"
    Stats = "mcr.stats"
    Security = "mcr.security"
    Network = "mcr.netlink"
    Test = "mcr.test"

    @property
    def logger_name(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str) -> Facility:
        """Facility names are exact and case-sensitive, as in the original."""
        try:
            return cls[text]
        except KeyError:
            names = ", ".join(m.name for m in cls)
            raise ValidationError(f"invalid facility '{text}'; expected one of {names}") from None


#: The facilities today's original knows (it dropped ControlPlane): a GetLogLevels answer naming another
#: one would fail to decode in its client, so ours carries those apart (mcr.protocol.control).
ORIGINAL_FACILITIES = frozenset(f.name for f in Facility) - {"ControlPlane"}
