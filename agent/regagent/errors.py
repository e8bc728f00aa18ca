"""Errors a person can act on; the CLI turns each into one line and an exit code."""

from __future__ import annotations

from typing import Sequence


class RegagentError(Exception):
    """Base class: anything regagent reports to the user without a traceback."""

    exit_code = 1


class ConfigError(RegagentError):
    """The configuration is invalid; carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ConsulUnreachable(RegagentError):
    """No configured Consul server answered usefully."""


class ConsulRefused(RegagentError):
    """A server answered with a 4xx: retrying on another server would not help."""

    def __init__(self, server: str, status: int, message: str) -> None:
        self.server = server
        self.status = status
        self.message = message
        super().__init__(f"Consul {server} refused the request ({status}): {message}")


class NodeOwnedByAgent(RegagentError):
    """The node name belongs to a real Consul agent, whose anti-entropy would undo our writes."""
