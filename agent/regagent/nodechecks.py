"""Node-level checks regagent owns: who declares them, and what "owned" means.

A feature that wants a check on the host's node (the session check of the dead-man's switch,
a maintenance check) is a `NodeCheckSource`: at every full cycle the catalog backend asks each
source for its `NodeCheckClaim` — the check IDs it manages and the checks it wants present now
— and puts them into the desired state. The planner then writes a wanted check that is missing
or differs, and removes a present check whose ID is claimed but not wanted. A node check whose
ID no source claims (a real agent's `serfHealth`, a check another tool wrote) is never written
or removed; `serfHealth` is refused even if claimed.

Pure: a source answers from what it already knows (no network, no clock reads that matter to
a test), like `Registrar.desired`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import FrozenSet, Iterable, List, Optional, Protocol, Tuple

from regagent.model import ActualState, NodeCheck

SERF_HEALTH = "serfHealth"  # a Consul agent's own node check: never regagent's


@dataclass(frozen=True)
class NodeCheckClaim:
    """What one source manages on the node: `owned` IDs, of which `wanted` are present now."""

    owned: FrozenSet[str]
    wanted: Tuple[NodeCheck, ...] = ()

    def __post_init__(self) -> None:
        stray = {c.check_id for c in self.wanted} - self.owned
        if stray:
            raise ValueError(f"node checks wanted but not owned: {sorted(stray)}")


class NodeCheckSource(Protocol):
    """A feature that puts checks on the host's node (catalog mode)."""

    def node_checks(self, actual: Optional[ActualState]) -> NodeCheckClaim:
        """The checks this source manages, given what Consul holds for the node (None when
        unknown: a partial cycle or a failed read). No network."""
        ...


def merged(claims: Iterable[NodeCheckClaim]) -> NodeCheckClaim:
    """All sources' claims as one, by check ID; two sources claiming one ID is a bug."""
    owned: FrozenSet[str] = frozenset()
    wanted: List[NodeCheck] = []
    for claim in claims:
        clash = owned & claim.owned
        if clash:
            raise ValueError(f"node check IDs claimed twice: {sorted(clash)}")
        owned |= claim.owned
        wanted.extend(claim.wanted)
    owned -= {SERF_HEALTH}
    return NodeCheckClaim(
        owned,
        tuple(sorted((c for c in wanted if c.check_id in owned), key=lambda c: c.check_id)),
    )
