"""The original's control-plane requests (IGMP, PIM, MSDP, the multicast routing table, event subscriptions).

Today's original (HEAD fced3ed) sends these from `mcrctl pim|msdp|mroute|subscribe`. This relay does not
serve them yet (its IGMP requests are served: `mcr.protocol.control.SetQuerier`, `Query.GET_IGMP_GROUPS`):
each is decoded to a `ControlPlaneRequest` that names the command and the protocol it belongs to, and the
supervisor answers with an error that says so (one place: `Supervisor.control_plane`).

When a protocol lands, its commands move out of `NOT_SERVED` into typed requests of their own in
`mcr.protocol.control`, and their `case` in the supervisor replaces the error.
"""

from __future__ import annotations

from dataclasses import dataclass

#: command -> the protocol (or facility) it belongs to, for every control-plane request not served yet (the
#: PIM, MSDP and mroute requests that are served live in `mcr.protocol.routing`)
NOT_SERVED: dict[str, str] = {
    **dict.fromkeys(
        (
            "AddExternalNeighbor",
            "RemoveExternalNeighbor",
            "ListExternalNeighbors",
            "ClearExternalNeighbors",
            "SetRpfProvider",
            "GetRpfProvider",
            "QueryRpf",
            "AddRpfRoute",
            "RemoveRpfRoute",
            "ListRpfRoutes",
            "ClearRpfRoutes",
        ),
        "PIM",
    ),
    **dict.fromkeys(("Subscribe", "Unsubscribe", "ListSubscriptions"), "event subscriptions"),
}

#: those that only look (a read-only client may send them)
_LOOKING_PREFIXES = ("Get", "List", "Query")


@dataclass(frozen=True, slots=True)
class ControlPlaneRequest:
    """One of the original's control-plane requests, which this relay does not serve yet."""

    command: str
    protocol: str

    @property
    def read_only(self) -> bool:
        return self.command.startswith(_LOOKING_PREFIXES)

    @property
    def refusal(self) -> str:
        return (
            f"{self.command} is not supported: {self.protocol} is not implemented in this relay yet "
            "(it forwards by static and runtime rules only)"
        )


def decode_control_plane(command: str) -> ControlPlaneRequest | None:
    """The request when `command` is one of the control-plane commands, else None. Its arguments are
    not looked at: whatever they are, the answer is the same error."""
    protocol = NOT_SERVED.get(command)
    return None if protocol is None else ControlPlaneRequest(command, protocol)
