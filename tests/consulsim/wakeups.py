"""Blocked reads of one node's catalog entry, woken only when that node's index may move.

Consul's memdb watch channels wake a blocking ``/v1/catalog/node/<node>`` only when the node's
own entry changes (PR #12399). One condition variable for the whole cluster would wake every
held node query on every write, which at a thousand held polls makes the emulator, not the
client, the slow part. Each watched node gets a condition of its own, built on the cluster's
lock, so a waiter still re-checks its index under that lock and no wake-up can be lost.

Not thread-safe by itself: the cluster holds its lock around every call.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Dict, Iterable, Iterator, List


class NodeWakeups:
    """One condition per watched node (lower-cased name), shared by that node's waiters."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._conditions: Dict[str, threading.Condition] = {}
        self._waiters: Dict[str, int] = {}

    @contextlib.contextmanager
    def watching(self, node_key: str) -> Iterator[threading.Condition]:
        """The condition a read of ``node_key`` waits on, registered while the block runs."""
        cond = self._conditions.get(node_key)
        if cond is None:
            cond = self._conditions[node_key] = threading.Condition(self._lock)
        self._waiters[node_key] = self._waiters.get(node_key, 0) + 1
        try:
            yield cond
        finally:
            self._waiters[node_key] -= 1
            if self._waiters[node_key] == 0:
                del self._waiters[node_key]
                del self._conditions[node_key]

    def watched(self) -> List[str]:
        """The node keys some read is waiting on now."""
        return list(self._conditions)

    def wake(self, node_keys: Iterable[str]) -> None:
        """Wake the readers of these nodes (keys nobody waits on are skipped)."""
        for key in node_keys:
            cond = self._conditions.get(key)
            if cond is not None:
                cond.notify_all()

    def wake_all(self) -> None:
        """Wake every node reader: the server stopped, the store was replaced, and the like."""
        self.wake(self.watched())
