"""The maintenance window as a node check: a `NodeCheckSource` (regagent.nodechecks).

While the recorded window runs, the node carries Consul's own maintenance check, exactly as
`consul maint -enable -reason R` creates it through an agent (agent/agent.go
`EnableNodeMaintenance`): CheckID `_node_maintenance`, Name `Node Maintenance Mode`, Status
critical, Notes R, no service. Output (empty in Consul's) says until when, in stable text.
Once the window has ended (expired, stopped, or its record is gone) the check is removed at the
next full cycle: the ID is always claimed, so a check left by a window that ended while the
daemon was down goes as soon as it runs again.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from regagent.maintenance.store import MaintenanceStore
from regagent.maintenance.window import (
    NODE_MAINTENANCE_CHECK_ID,
    NODE_MAINTENANCE_CHECK_NAME,
    Window,
)
from regagent.model import CRITICAL, ActualState, NodeCheck
from regagent.nodechecks import NodeCheckClaim
from regagent.rules import utc_text

OWNED = frozenset({NODE_MAINTENANCE_CHECK_ID})
END_MARGIN = 0.1  # seconds past the end: the cycle then finds the window over


def maintenance_check(window: Window) -> NodeCheck:
    """The node check of a running window."""
    until = utc_text(round(window.until))
    return NodeCheck(
        NODE_MAINTENANCE_CHECK_ID,
        NODE_MAINTENANCE_CHECK_NAME,
        CRITICAL,
        output=f"regagent maint: in maintenance until {until}",
        notes=window.reason,
    )


def maintenance_claim(window: Optional[Window], now: float) -> NodeCheckClaim:
    """`_node_maintenance` owned always, wanted while `window` runs at `now`."""
    if window is None or not window.active(now):
        return NodeCheckClaim(OWNED)
    return NodeCheckClaim(OWNED, (maintenance_check(window),))


class MaintenanceChecks:
    """Reads the window from the state directory (a few hundred bytes) at every full cycle,
    and about once a second while the daemon waits (`due`): a window `maint start` opened
    during the wait is then ended on time. A stat-keyed cache would save a few syscalls a
    second at the price of a second source of truth; not worth it."""

    def __init__(self, store: MaintenanceStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def node_checks(self, actual: Optional[ActualState]) -> NodeCheckClaim:
        return maintenance_claim(self.store.read(), self.clock())

    def due(self) -> Optional[float]:
        """Seconds until the running window ends (a full cycle then removes the check), or None
        without one: the daemon syncs then instead of up to an interval later."""
        window = self.store.read()
        now = self.clock()
        if window is None or not window.active(now):
            return None
        return window.remaining(now) + END_MARGIN
