"""The blocking query on this host's own node (catalog mode, `regagent run`).

One thread keeps `GET /v1/catalog/node/<node>?index=N&wait=W&stale` open on a server of the
pool. Consul answers it as soon as the node's own index moves, or after `W` (capped at its
`max_query_time`, 10 min, plus up to W/16 of jitter). What moves that index, in Consul's state
store (`agent/consul/state/catalog.go`, since PR #12399): a write of the node or of a service
on the node, the deletion of such a service, and, for a node that is gone, the node
extinction index, so the poll also wakes when someone deregisters the whole node and answers
`null`. Check writes do not move it: a check's status set by a third party is not seen here
(`checks_max_age` says how long the cycles then go on using the checks they last read).

What the thread keeps (`Watched`, the last answer) serves two readers, both in the main
thread:
- the daemon's repair (`regagent.repair`): each answer is news; the engine plans what regagent
  last wrote against it and writes what differs through the usual write path, about a second
  after the change (nothing, and no request, when Consul holds what regagent wrote);
- the full cycle's read (`CatalogRegistrar.read`): while the answer is fresh (`fresh`), it is
  what Consul holds for the node, and the cycle asks Consul nothing for it.

Index rules (Consul's blocking-query documentation): an index that goes backwards (a snapshot
restore) or is 0 starts over from 0, i.e. with a non-blocking read. Pacing: two polls start at
least `MIN_GAP` apart; after a failure, or an answer that came back at once with the index the
poll sent (a server or proxy that does not hold blocking queries), the gap doubles up to
`BACKOFF_MAX`. Such a server is also asked last for a while (`ServerPool.move_on`).

Every poll goes through the server pool: failover, cool-downs and the answer-size cap apply.
Its time bound is `poll_bound`: the wait, Consul's jitter and `consul.read_timeout`; a server
that holds the poll longer is treated as silent (cooled down) and the next poll goes elsewhere.
Only the first, non-blocking read is hedged: a blocking answer is late by design.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import structlog

from regagent.consul.catalog import parse_node
from regagent.consul.http import parsed, stale_get
from regagent.consul.pool import ServerPool
from regagent.errors import RegagentError
from regagent.model import NodeRegistration, ServiceRegistration
from regagent.threads import signals_blocked

log = structlog.get_logger(__name__)

Clock = Callable[[], float]

MIN_GAP = 1.0  # seconds between the starts of two polls, whatever the answers
BACKOFF_MAX = 60.0  # the longest gap, after failures or answers that did not block
EARLY_BELOW = 5.0  # an unchanged answer sooner than this (or half the wait) did not block
CHECKS_MAX_AGE = 2  # the checks the cycles last read serve this many waits (see module doc)


def poll_bound(wait: float, read_timeout: float) -> float:
    """How long one poll may take: Consul's wait, its jitter (up to wait/16) and the usual
    read timeout for the answer itself. A server that holds a poll longer is silent."""
    return wait + wait / 16 + read_timeout


@dataclass(frozen=True)
class Watched:
    """One answer of the poll: what Consul holds for the node (None: no such node)."""

    node: Optional[NodeRegistration]
    services: Tuple[ServiceRegistration, ...]
    index: int
    known_leader: bool
    received: float = 0.0  # the watch's clock


def read_node(client: Any, node_name: str, index: int, wait: float, bound: float) -> Watched:
    """One poll on `client`'s server: a plain read for index 0, else a blocking one, its time
    bound raised to `bound` (the client's other limits, the answer-size cap included, kept)."""
    path = f"/v1/catalog/node/{node_name}"  # the transport percent-encodes it, once
    blocking: List[Tuple[str, str]] = []
    if index > 0:
        blocking = [("index", str(index)), ("wait", f"{max(1, round(wait))}s")]
        limits = client.http.limits
        client = copy.copy(client)
        client.http = client.http.bounded_by(
            replace(limits, read_timeout=bound, deadline=limits.connect_timeout + bound)
        )
    answer = stale_get(client, path, dict, blocking)
    node, services = parsed(answer.data, parse_node, path)
    return Watched(node, services, answer.index, answer.known_leader)


class NodeWatch:
    """The poll's thread and what it learnt. Kept across a reload that keeps the servers, the
    node name and the wait (`same_target`, `rebind`): no new read, the cache stays fresh."""

    def __init__(
        self,
        pool: ServerPool,
        node_name: str,
        wait: float,
        *,
        clock: Clock = time.monotonic,
        on_event: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.pool = pool
        self.node_name = node_name
        self.wait = wait
        self.bound = poll_bound(wait, pool.policy.read_timeout)
        self.checks_max_age = CHECKS_MAX_AGE * wait
        self.clock = clock
        self.on_event = on_event  # metrics: changed, unchanged, index_reset, not_blocking, failed
        self.on_news: Callable[[], None] = lambda: None  # the daemon wakes its loop
        self.index = 0
        self.answer: Optional[Watched] = None
        self.holding = False  # the last poll was answered as a blocking query should be
        self.confirmed = float("-inf")  # when an answer last said `answer` is current
        # regagent's last write of the node or its services: when it began and ended, and the
        # index the watch knew when it began (0: none, or the write failed)
        self.writing_since = float("-inf")
        self.written = float("-inf")
        self.written_over = 0
        self.streak = 0  # failures or non-blocking answers in a row
        self.last_start = float("-inf")
        self.counts: Dict[str, int] = {}
        # An answer showed no node since the registrar last asked: every check of the node
        # went with it, node-level ones too, whatever the cycles last read (`node_was_gone`).
        self._node_gone = False
        self._news = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Starts polling (once; again after `stop` is not supported)."""
        if self._thread is not None or self._stop.is_set():
            return
        log.info("node_watch_started", node=self.node_name, wait_s=self.wait, bound_s=self.bound)
        self._thread = threading.Thread(target=self._run, name="regagent-node-watch", daemon=True)
        with signals_blocked():  # the daemon's signals stay with the main thread
            self._thread.start()

    def stop(self) -> None:
        """Stops at once: a poll in flight is abandoned (a daemon thread, bounded by
        `bound`), its answer ignored."""
        self._stop.set()

    def same_target(self, pool: ServerPool, node_name: str, wait: float) -> bool:
        """Whether a reload to these settings can keep this watch."""
        servers = [s.address for s in pool.servers]
        return (
            servers == [s.address for s in self.pool.servers]
            and node_name == self.node_name
            and wait == self.wait
        )

    def rebind(self, pool: ServerPool) -> None:
        """The reloaded configuration's pool (same servers; maybe a new token or TLS files)
        serves the polls from the next one on."""
        self.pool = pool

    def _run(self) -> None:
        while not self._stop.wait(self.pause()):
            self.poll()

    def pause(self) -> float:
        """Seconds until the next poll may start (see the module doc for the bound)."""
        gap = min(BACKOFF_MAX, MIN_GAP * 2.0 ** max(0, self.streak - 1))
        return max(0.0, self.last_start + gap - self.clock())

    def poll(self) -> None:
        """One poll and what its answer means; never raises."""
        pool, index = self.pool, self.index
        self.last_start = started = self.clock()
        try:
            got = pool.call(
                "watch node",
                lambda c: read_node(c, self.node_name, index, self.wait, self.bound),
                hedge=index == 0,
                blocking=index > 0,
            )
        except RegagentError as exc:
            self._failed(str(exc))
            return
        except Exception:  # a bug must cost the watch, never the daemon
            log.exception("node_watch_crashed")
            self._failed("internal error")
            return
        if self._stop.is_set():
            return  # stopped (or replaced by a reload) meanwhile: not ours to tell
        self._answered(got, index, started)

    def _failed(self, error: str) -> None:
        with self._lock:
            self.holding = False
            self.streak += 1
        self._count("failed")
        log.debug("node_watch_failed", error=error, retry_in_s=round(self.pause(), 1))

    def _answered(self, got: Watched, sent: int, started: float) -> None:
        now = self.clock()
        got = replace(got, received=now)
        early = now - started < min(self.wait / 2, EARLY_BELOW)
        move_on = False
        with self._lock:
            if got.index <= 0 or got.index < sent:
                event = "index_reset"
                log.info("node_watch_index_reset", sent=sent, answered=got.index)
                self.index = 0
                self.holding = got.index > 0
                self.streak = self.streak + 1 if got.index <= 0 else 0
            elif got.index == sent and early:
                event = "not_blocking"
                self.holding = False
                self.streak += 1
                move_on = True
            else:
                event = "unchanged" if got.index == sent else "changed"
                self.index = got.index
                self.holding = True
                self.streak = 0
            news = event != "not_blocking"
            if news:
                # Every answer is news, also one like the last: what regagent wrote since may
                # be gone again without the watch ever seeing it (a restore to an older index).
                self.confirmed = now
                self.answer = got
                self._news = True
                self._node_gone = self._node_gone or got.node is None
        self._count(event)
        if move_on:
            if self.streak == 1:
                log.warning(
                    "node_watch_not_blocking",
                    hint="a server (or a proxy in front of it) answers blocking queries at "
                    "once; polls back off, cycles read as without the watch",
                )
            self.pool.move_on("answers blocking queries at once")
        if news:
            self.on_news()

    def _count(self, event: str) -> None:
        self.counts[event] = self.counts.get(event, 0) + 1
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # metrics must never break the watch
                log.debug("node_watch_observer_failed", exc_info=True)

    # -- what the main thread asks ---------------------------------------------------------

    def fresh(self) -> Optional[Watched]:
        """The last answer while it is known to be what Consul holds: the server is holding a
        poll sent with its index (answered within `bound`, the last poll neither failed nor
        came back at once), and regagent has not written the node or its services since."""
        with self._lock:
            answer = self.answer
            if answer is None or not self.holding or self.index == 0:
                return None
            if not self._after_writes(answer) or self.clock() - self.confirmed > self.bound:
                return None
            return answer

    def _after_writes(self, answer: Watched) -> bool:
        """Whether `answer` shows regagent's last write: received after it ended, or after it
        began with an index past the one known then (the write moves it; an answer computed
        just before it, with another change, is followed by the write's own)."""
        if answer.received > self.written:
            return True
        return (
            answer.received > self.writing_since
            and self.written_over > 0
            and answer.index > self.written_over
        )

    def node_was_gone(self) -> bool:
        """Whether an answer showed the node gone since the last call (then the checks last
        read are not what Consul holds, even once the node is back)."""
        with self._lock:
            gone, self._node_gone = self._node_gone, False
            return gone

    @property
    def has_news(self) -> bool:
        return self._news

    def take_news(self) -> Optional[Watched]:
        """The last answer, once; None when there is none new, or when regagent wrote the
        node since (the answer to its own write is on its way)."""
        with self._lock:
            if not self._news:
                return None
            self._news = False
            answer = self.answer
            if answer is None or not self._after_writes(answer):
                return None
            return answer

    def writing(self) -> None:
        """regagent begins to write the node or its services (see `_after_writes`)."""
        with self._lock:
            self.writing_since = self.written = self.clock()
            self.written_over = self.index

    def wrote(self, ok: bool = True) -> None:
        """regagent's write has ended; not `ok`: what landed is unknown, so only an answer
        received from now on shows what Consul holds."""
        with self._lock:
            self.written = self.clock()
            if not ok:
                self.written_over = 0
