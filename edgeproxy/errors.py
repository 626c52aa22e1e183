"""edgeproxy's exceptions: one root, split by domain.

A peer's protocol error is told apart from ours and carries the HTTP status to
answer with (like h11's `RemoteProtocolError(..., error_status_hint=431)`).
"""

from __future__ import annotations


class EdgeproxyError(Exception):
    """Root of every error edgeproxy raises on purpose."""


class ConfigError(EdgeproxyError):
    """The config is invalid; `problems` lists each one with its key path and the fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ClientProtocolError(EdgeproxyError):
    """The client sent something we refuse to forward; answer with `status` and close."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        self.headers: list[tuple[bytes, bytes]] = []
        """Security headers of the route, when one was matched (set by the data plane)."""
        super().__init__(f"{status}: {reason}")


class UpstreamProtocolError(EdgeproxyError):
    """An upstream's response we refuse to pass on; the client gets `status` (502)."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status}: {reason}")


class SwitchError(EdgeproxyError):
    """A switch transition is not allowed from the current state (message names it)."""

    status = 409


class NotFoundError(SwitchError):
    """Unknown app or color."""

    status = 404


class InvalidRequest(SwitchError):
    """A control request is malformed (bad weight, missing field)."""

    status = 400


class UnhealthyTarget(SwitchError):
    """A switch to an unhealthy color was refused (use force to override)."""

    status = 409


class TLSConfigError(EdgeproxyError):
    """A certificate or key could not be loaded; the message names the file."""


class StartupError(EdgeproxyError):
    """edgeproxy cannot start (port in use, socket path unwritable, …)."""


class IllegalTransition(EdgeproxyError):
    """A state machine was asked for a step its transition table does not allow (our bug)."""

    def __init__(self, machine: str, old: str, new: str) -> None:
        self.machine = machine
        self.old = old
        self.new = new
        super().__init__(f"{machine} cannot go from {old} to {new}")
