"""Hedged reads (design decision 14): a read gets a head start on one server and is then also
sent to the next; the first good answer wins, with at most one extra request.

Each hedged attempt runs in a thread of its own, so that the caller can stop waiting for it. An
answer that arrives after the caller has moved on (an orphan) is still handed to the pool
(`judge_late`): a timeout cools its server down, an answer feeds its latency estimate. The
transport's deadline bounds how long any attempt can run. The attempts share the pool's lock,
so an attempt's outcome and the pool's view of its server change together. The threads are
kept for the next reads (`Workers`): starting one cost more CPU than the read it ran.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Protocol, Sequence, Tuple

from regagent.threads import start_thread

Clock = Callable[[], float]
Operation = Callable[[Any], Any]
Job = Callable[[], None]

IDLE_FOR = 120.0  # seconds a worker waits for the next read before it ends (cycles: 30 s)


class Server(Protocol):
    """What hedging reads and counts of one of the pool's servers."""

    address: str
    client: Any
    requests: int  # every request sent to it
    in_flight: int  # hedged requests still waiting for their answer


@dataclass(eq=False)  # compared by identity
class Attempt:
    """One request to one server (by its index in the pool)."""

    index: int
    started: float
    done: bool = False
    result: Any = None
    error: Optional[BaseException] = None
    orphaned: bool = False  # the caller has moved on: judge the outcome when it comes


class HedgedReads:
    """Starts hedged attempts, waits for the first that settles a read, and keeps track of the
    answers still owed."""

    def __init__(
        self, lock: threading.RLock, clock: Clock, judge_late: Callable[[Attempt], None]
    ) -> None:
        self.clock = clock
        self.judge_late = judge_late  # called under the lock with an orphan's outcome
        self._settled = threading.Condition(lock)
        self._workers = Workers("consul-read")

    def race(
        self,
        operation: Operation,
        servers: Sequence[Server],
        first: int,
        second: int,
        head_start: float,
    ) -> Tuple[List[Attempt], List[Attempt]]:
        """`first` gets `head_start` seconds, then `second` is asked too.

        Returns (attempts started, attempts to judge in order). To judge is either the first
        good answer alone (the slower attempt is left to its thread; `leave` it) or, if the
        first to finish failed, every attempt."""
        started = [self._start(operation, servers, first)]
        with self._settled:
            self._settled.wait_for(lambda: started[0].done, timeout=head_start)
            if not started[0].done:
                started.append(self._start(operation, servers, second))
                self._settled.wait_for(lambda: any(a.done for a in started))
            winner = next(a for a in started if a.done)
            if winner.error is None:
                return started, [winner]
            self._settled.wait_for(lambda: all(a.done for a in started))
            return started, [winner] + [a for a in started if a is not winner]

    def leave(self, attempts: Sequence[Attempt]) -> None:
        """The caller no longer waits for `attempts`: each is judged late, when it ends."""
        with self._settled:
            for attempt in attempts:
                if attempt.done:
                    self.judge_late(attempt)
                else:
                    attempt.orphaned = True

    def wait_idle(self, servers: Sequence[Server], timeout: float) -> bool:
        """Waits until no server is still owed an answer; False if some still are after
        `timeout`."""
        with self._settled:
            return self._settled.wait_for(
                lambda: all(s.in_flight == 0 for s in servers), timeout=timeout
            )

    def _start(self, operation: Operation, servers: Sequence[Server], index: int) -> Attempt:
        server = servers[index]
        with self._settled:
            server.requests += 1
            server.in_flight += 1
        attempt = Attempt(index, self.clock())

        def run() -> None:
            try:
                result = operation(server.client)
            except Exception as exc:
                error: Optional[BaseException] = exc
                result = None
            else:
                error = None
            with self._settled:
                attempt.result, attempt.error, attempt.done = result, error, True
                server.in_flight -= 1
                if attempt.orphaned:
                    self.judge_late(attempt)
                self._settled.notify_all()

        self._workers.run(run)
        return attempt


class Workers:
    """Threads that run jobs, each kept `idle_for` seconds for the next one; a job that finds
    no idle thread starts one. Daemon threads, not an executor: a one-shot command must not
    wait at exit for the answer of a black-holed server it no longer needs."""

    def __init__(self, name: str, idle_for: float = IDLE_FOR) -> None:
        self.name = name
        self.idle_for = idle_for
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job, minus the jobs handed to them

    def run(self, job: Job) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put(job)
                return
        start_thread(lambda: self._work(job), self.name)

    def _work(self, job: Optional[Job]) -> None:
        while job is not None:
            job()
            with self._lock:
                self._idle += 1
            job = self._next()

    def _next(self) -> Optional[Job]:
        try:
            return self._jobs.get(timeout=self.idle_for)
        except queue.Empty:
            with self._lock:  # `run` hands out work under this lock: no job is lost
                try:
                    return self._jobs.get_nowait()
                except queue.Empty:
                    self._idle -= 1
                    return None
