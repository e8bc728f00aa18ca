"""Probes of listeners not yet confirmed as exporters: in the background, bounded, remembered
per socket.

A candidate listener on a port no service of this host uses yet is *unconfirmed*: it may be a
new exporter, or anything a local user opened in `discovery.port_ranges`. A socket that accepts
and never answers holds its probe for the whole `probe_timeout`; probed inside the cycle, a few
hundred of them took every cycle past its deadline before anything was written. So such probes
never run inside a cycle or a watch pass (design decision 15):

- **In the background.** A pass (full cycle or watch pass) offers the unconfirmed candidates it
  found and takes the results that are ready; a later pass registers the rest. Probes run on at
  most `workers` threads, started on demand (with the daemon's signals blocked) and ended when
  idle. Nothing waits for them, except a one-shot command (`sync`, `discover`), which has no
  later pass: it waits up to `settle` seconds, then reports the rest as pending.
- **A budget.** At most `rate` probe starts a second (a burst of up to `burst`): what a host can
  be made to spend on listeners nobody vouches for is bounded, whatever opens ports.
- **A memory per socket** (port, inodes, probe settings). An identified exporter is not probed
  again while its socket lives (once registered, its health is the full cycle's probe of a known
  service); anything else is probed again 0.5, 1, 2, 4, ... s after each failure, doubling up to
  `RETRY_MAX`. A new socket (a restarted exporter) starts afresh.
- **A longer look for a slow listener.** A first probe is as long as a health probe
  (`probe_timeout`). A socket that did not answer in that time gets one longer look at once, as
  long as Prometheus's own scrape timeout (`identify_timeout`, 10 s), and its later retries are as
  long: an exporter whose backend is down may answer in seconds, and it is still a target. At
  most `slow_workers` (half the workers) run such looks at a time, so silent sockets never hold
  every worker and a new exporter's first probe always has one.
- **Fair.** Picks alternate between the listener seen last (a new exporter among hundreds of
  silent sockets is not queued behind them) and the one waiting longest (a burst of new sockets
  cannot starve older ones).

Results that name an exporter are *news* until a pass takes them: `next_check` tells the watch
to look again now, and, while a young socket (its first few probes: an exporter often binds
before it serves) may be answering, `CHECK_EVERY` seconds after its probe may have ended.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, FrozenSet, Iterator, List, Optional, Sequence, Set, Tuple

import structlog

from regagent.discovery.identify import (
    IDENTIFIED,
    MAX_PATHS_PER_LISTENER,
    NOT_EXPORTER,
    PENDING,
    Finding,
    Identify,
    Prober,
)
from regagent.discovery.probe import ProbeResult
from regagent.threads import start_thread

log = structlog.get_logger(__name__)

WORKERS = 8  # probes of unconfirmed listeners at a time
RATE = 2.0  # probe starts a second, sustained (120 a minute, 60 per default 30 s cycle)
BURST = 20  # starts allowed at once (a host starting its exporters together)
ONE_SHOT_BURST = 256  # a one-shot command is run by a person, once: probe what it can at once
RETRY_FIRST = 0.5  # seconds after the first failure; doubled after each further one
RETRY_MAX = 300.0
CHECK_EVERY = 0.1  # how soon after a young socket's probe may end the watch looks again
YOUNG_ATTEMPTS = 5  # a socket's first probes (about 7.5 s with the retries) are worth a look
IDLE_EXIT = 10.0  # a worker with nothing due for this long ends (started again on demand)
PENDING_REASON = (
    "identification pending: a new listener is probed in the background "
    "(at most {rate:g} probes a second); a later pass registers it"
)

# (probe address, port, inodes of its sockets, metrics path, probe timeout, probe max bytes)
SocketKey = Tuple[str, int, FrozenSet[int], str, float, int]
Clock = Callable[[], float]


def socket_key(finding: Finding, timeout: float, max_bytes: int) -> SocketKey:
    inodes = frozenset(listener.inode for listener in finding.listeners)
    return (finding.probe_address, finding.port, inodes, finding.metrics_path, timeout, max_bytes)


def retry_delay(failures: int) -> float:
    """Seconds before the next probe of a socket that failed `failures` times in a row."""
    return min(RETRY_MAX, RETRY_FIRST * 2.0 ** min(failures - 1, 20))


@dataclass
class _Socket:
    finding: Finding  # the candidate as last offered
    identify: Identify  # how to probe it (settings and exporter table bound in)
    seen: float  # monotonic: first offered
    due: float  # monotonic: next probe; inf: not again while the socket lives
    timeout: float = 0.0  # of a first probe (the socket key has it too)
    slow_timeout: Optional[float] = None  # of a longer look; None: no longer look
    attempts: int = 0
    running_since: Optional[float] = None
    running_slow: bool = False
    slow: bool = False  # it timed out once: its probes are longer looks from now on
    looked_long: bool = False  # a longer look has ended (a one-shot waits for the first one)
    finished: float = 0.0  # monotonic: when the last probe ended
    result: Optional[Finding] = None  # the last identification
    news: bool = False  # an exporter identified that no pass has taken yet

    @property
    def settled(self) -> bool:
        """Whether the last result is worth reporting: not while a longer look is to come."""
        return self.result is not None and (not self.slow or self.looked_long)


class UnconfirmedProbes:
    """The background identification of unconfirmed listeners for one process (one sensor)."""

    def __init__(
        self,
        prober: Prober,
        *,
        workers: int = WORKERS,
        slow_workers: Optional[int] = None,
        rate: float = RATE,
        burst: int = BURST,
        settle: Optional[float] = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.prober = prober
        self.workers = workers
        # Of them, at most this many on a longer look (default: half).
        self.slow_workers = max(1, workers // 2) if slow_workers is None else slow_workers
        self.rate = rate
        self.burst = burst
        # None: wait for results as long as one identification can take (a one-shot command);
        # 0: never wait (the daemon).
        self.settle = settle
        self.clock = clock
        self.started = 0  # probes started, for tests and the bench
        self._cond = threading.Condition()
        self._sockets: Dict[SocketKey, _Socket] = {}
        self._running_workers = 0
        self._busy_workers = 0  # of them, probing now
        self._looking_long = 0  # of those, on a longer look (at most slow_workers)
        self._tokens = float(burst)
        self._refilled = clock()
        self._turn = itertools.count()
        self._used: Set[int] = set()
        self._closed = False

    @classmethod
    def for_daemon(cls, prober: Prober) -> UnconfirmedProbes:
        return cls(prober, settle=0.0)

    @classmethod
    def for_one_shot(cls, prober: Prober) -> UnconfirmedProbes:
        return cls(prober, burst=ONE_SHOT_BURST)

    # -- what a pass does -----------------------------------------------------------------------

    def offer(
        self,
        candidates: Sequence[Finding],
        identify: Identify,
        timeout: float,
        max_bytes: int,
        *,
        slow_timeout: Optional[float] = None,
    ) -> None:
        """These are the unconfirmed candidates now: new sockets are queued, sockets no longer
        offered are forgotten. `timeout`: a first probe's; `slow_timeout`: a longer look's, for
        a socket that did not answer within `timeout` (None: no longer look)."""
        now = self.clock()
        keys = {socket_key(f, timeout, max_bytes): f for f in candidates}
        with self._cond:
            for key in [k for k in self._sockets if k not in keys]:
                del self._sockets[key]
            for key, finding in keys.items():
                known = self._sockets.get(key)
                if known is None:
                    known = self._sockets[key] = _Socket(finding, identify, seen=now, due=now)
                known.finding, known.identify = finding, identify
                known.timeout, known.slow_timeout = timeout, slow_timeout
            self._start_workers()

    def collect(
        self, candidates: Sequence[Finding], timeout: float, max_bytes: int
    ) -> List[Finding]:
        """Each candidate as identified by its last probe, or PENDING; waits up to `settle`
        (or one identification's worth of time) only in a one-shot command."""
        keys = [socket_key(f, timeout, max_bytes) for f in candidates]
        with self._cond:
            longest = max((self._slow_timeout(key) for key in keys), default=0.0)
            wait = _identification_time(timeout) + longest if self.settle is None else self.settle
            deadline = self.clock() + wait
            for _ in range(10_000):  # each turn waits on the condition; bounded by the deadline
                left = deadline - self.clock()
                if left <= 0 or not self._waiting_for(keys):
                    break
                self._cond.wait(min(left, 1.0))
            return [self._found(key, finding) for key, finding in zip(keys, candidates)]

    def used_ports(self) -> FrozenSet[int]:
        """Ports whose exporter a pass took as news since the last call (then forgotten)."""
        with self._cond:
            ports, self._used = frozenset(self._used), set()
            return ports

    def next_check(self) -> Optional[float]:
        """When the watch should look again for results (monotonic), or None."""
        with self._cond:
            news = [s.finished for s in self._sockets.values() if s.news]
            if news:
                return min(news)  # already due: the time the first result came
            now = self.clock()
            young = [s for s in self._sockets.values() if s.attempts < YOUNG_ATTEMPTS]
            # A new socket (an exporter that binds before it serves is retried a few times
            # soon): look again shortly after its probe may have ended.
            checks = [
                max(now, s.due if s.running_since is None else now) + CHECK_EVERY for s in young
            ]
            return min(checks, default=None)

    def _slow_timeout(self, key: SocketKey) -> float:
        item = self._sockets.get(key)
        if item is None or item.slow_timeout is None:
            return 0.0
        return item.slow_timeout

    def _waiting_for(self, keys: Sequence[SocketKey]) -> bool:
        """Whether a result for one of `keys` can still come soon: one is running, or due and
        there is a worker and budget to start it."""
        for key in keys:
            item = self._sockets.get(key)
            if item is None or item.settled:
                continue
            if item.running_since is not None:
                return True
            if item.due <= self.clock() and self._tokens_now() >= 1:
                return True
        return False

    def _found(self, key: SocketKey, candidate: Finding) -> Finding:
        item = self._sockets.get(key)
        result = item.result if item is not None else None
        if item is None or result is None or not item.settled:
            return replace(candidate, outcome=PENDING, reason=PENDING_REASON.format(rate=self.rate))
        if item.news:
            item.news = False
            self._used.add(candidate.port)
        return replace(
            candidate,
            process=candidate.process or result.process,
            outcome=result.outcome,
            reason=result.reason,
            exporter=result.exporter,
            version=result.version,
            metrics_path=result.metrics_path,
            scheme=result.scheme,
            identified_by=result.identified_by,
            problem=result.problem,
        )

    def close(self) -> None:
        """Ends the workers once their current probe is over (they are daemon threads anyway:
        a stop never waits for them)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the workers ----------------------------------------------------------------------------

    def _start_workers(self) -> None:
        """Enough workers for what is due (called with the lock held): a worker busy with a
        probe (a longer look may last 10 s) does not count as one that will take it."""
        if self._closed:
            return
        now = self.clock()
        due = sum(1 for s in self._sockets.values() if s.running_since is None and s.due <= now)
        idle = self._running_workers - self._busy_workers
        wanted = min(self.workers - self._running_workers, due - idle)
        for _ in range(max(0, wanted)):
            self._running_workers += 1
            start_thread(self._work, name="regagent-identify")
        if due:
            self._cond.notify_all()

    def _work(self) -> None:
        try:
            for item in self._assignments():
                timed_out: List[bool] = []
                try:
                    result = item.identify(item.finding, self._attempt_prober(item, timed_out))
                except Exception as exc:  # a bug costs this probe, not the worker
                    log.error("identification_failed", port=item.finding.port, error=repr(exc))
                    result = replace(item.finding, outcome=NOT_EXPORTER, reason="internal error")
                with self._cond:
                    self._busy_workers -= 1
                    self._looking_long -= item.running_slow
                    self._finished(item, result, timed_out=any(timed_out))
        finally:
            with self._cond:
                self._running_workers -= 1

    def _attempt_prober(self, item: _Socket, timed_out: List[bool]) -> Prober:
        """The prober for one attempt: this attempt's timeout (a first probe's, or a longer
        look's), and a note of whether the listener let it run out."""
        timeout = item.slow_timeout if item.running_slow and item.slow_timeout else item.timeout

        def probe(
            address: str, port: int, path: str, _timeout: float, max_bytes: int
        ) -> ProbeResult:
            result = self.prober(address, port, path, timeout or _timeout, max_bytes)
            timed_out.append(result.timed_out)
            return result

        return probe

    def _assignments(self) -> Iterator[_Socket]:
        """The sockets this worker probes, one after another, until nothing is due for
        IDLE_EXIT seconds."""
        idle_since = self.clock()
        for _ in itertools.count():
            with self._cond:
                if self._closed:
                    return
                item, wait = self._pick()
                if item is None:
                    if self.clock() - idle_since >= IDLE_EXIT:
                        return
                    self._cond.wait(min(wait, IDLE_EXIT))
                    continue
                item.running_since = self.clock()
                item.running_slow = item.slow
                self._busy_workers += 1
                self._looking_long += item.slow
                self.started += 1
            yield item
            idle_since = self.clock()

    def _pick(self) -> Tuple[Optional[_Socket], float]:
        """The next socket to probe, or None and how long to wait (lock held)."""
        now = self.clock()
        ready = [s for s in self._sockets.values() if s.running_since is None]
        if self._looking_long >= self.slow_workers:
            ready = [s for s in ready if not s.slow]  # the other workers stay for first probes
        due = [s for s in ready if s.due <= now]
        if not due:
            soonest = min((s.due for s in ready), default=math.inf)
            return None, max(0.05, soonest - now)
        tokens = self._tokens_now()
        if tokens < 1:
            return None, max(0.05, (1 - tokens) / self.rate)
        self._tokens = tokens - 1
        if next(self._turn) % 2 == 0:
            chosen = max(due, key=lambda s: (s.seen, s.finding.port))  # the newest listener
        else:
            chosen = min(due, key=lambda s: (s.due, s.finding.port))  # the longest waiting
        return chosen, 0.0

    def _tokens_now(self) -> float:
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        return self._tokens

    def _finished(self, item: _Socket, result: Finding, *, timed_out: bool = False) -> None:
        """Lock held: keeps the result; an exporter is news, anything else backs off, except
        that a first timeout earns a longer look at once."""
        item.looked_long = item.looked_long or item.running_slow
        item.running_since, item.running_slow = None, False
        item.finished = self.clock()
        item.attempts += 1
        item.result = result
        item.news = result.is_exporter
        failures = 0 if result.outcome == IDENTIFIED else item.attempts
        item.due = math.inf if failures == 0 else self.clock() + retry_delay(failures)
        if failures and timed_out and item.slow_timeout and not item.slow:
            item.slow, item.due = True, self.clock()
        self._cond.notify_all()


def _identification_time(timeout: float) -> float:
    """How long one identification can take: each of its paths up to the probe timeout."""
    return MAX_PATHS_PER_LISTENER * timeout + 1.0
