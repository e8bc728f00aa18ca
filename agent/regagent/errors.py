"""Errors a person can act on; the CLI turns each into one line and its exit code.

Exit codes live here, on the classes, and nowhere else: 0 success (or in sync), 1 runtime
error, 2 invalid configuration or usage (and, with `sync --dry-run --detailed-exitcode`, "there
are changes to make"), 130 interrupted.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

EXIT_OK = 0
EXIT_INTERRUPTED = 130

E = TypeVar("E", bound="RegagentError")


class RegagentError(Exception):
    """Base class: anything regagent reports to the user without a traceback."""

    exit_code = 1

    def retold(self: E, message: str) -> E:
        """The same error (type, attributes, exit code) told in other words: whoever sorts
        errors by type, such as the metrics' `result` label, still sees what happened."""
        retold = type(self).__new__(type(self))
        retold.__dict__.update(self.__dict__)
        retold.args = (message,)
        return retold


class ConfigError(RegagentError):
    """The configuration is invalid; carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UsageError(RegagentError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = 2


class StateDirectoryInUse(RegagentError):
    """Another `regagent run` holds the state directory: two daemons would share its files."""


class ChangesPending(RegagentError):
    """`sync --dry-run --detailed-exitcode`: the plan is not empty (Terraform's convention)."""

    exit_code = 2


class ConsulUnreachable(RegagentError):
    """No configured Consul server answered usefully."""


class NoClusterLeader(ConsulUnreachable):
    """Servers answer but none knows a leader: writes wait for the next cycle."""


class ConsulRefused(RegagentError):
    """A server answered with a 4xx: retrying on another server would not help."""

    def __init__(self, server: str, status: int, message: str) -> None:
        self.server = server
        self.status = status
        self.message = message
        super().__init__(f"Consul {server} refused the request ({status}): {message}")


class NodeVanished(ConsulRefused):
    """A write refused because Consul no longer holds this host's node: it was deleted after
    the cycle read it (a snapshot restore, an operator's deregistration). Read again and write
    the node with the rest, rather than wait for the next cycle."""


class NoLocalRoute(RegagentError):
    """This host has no route to a Consul server, so `node.address: auto` finds no address."""


class NodeOwnedByAgent(RegagentError):
    """The node name belongs to a real Consul agent, whose anti-entropy would undo our writes."""


class NodeOwnedByOther(RegagentError):
    """The node exists in Consul but was not created by regagent (another tool's node)."""


class NodeOwnedByOtherHost(RegagentError):
    """A regagent node of this name carries another host's identity (cloned name)."""


class CycleDeadline(RegagentError):
    """A cycle ran past its deadline; what is left is done by the next one."""
