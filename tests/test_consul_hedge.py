"""The threads of hedged reads (regagent.consul.hedge.Workers): kept for the next read, one more
when every kept one is busy, ended once idle. (The hedged reads themselves, against a black-holed
emulator server: test_consul_pool.py.)"""

from __future__ import annotations

import threading
import time
from typing import Callable, List

from regagent.consul.hedge import Workers


def recorder(seen: List[int], done: threading.Event, hold: threading.Event) -> Callable[[], None]:
    def job() -> None:
        seen.append(threading.get_ident())
        hold.wait(10)
        done.set()

    return job


def released() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


def until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_a_worker_runs_the_next_job_too() -> None:
    workers = Workers("test-hedge")
    seen: List[int] = []
    for _ in range(3):
        done = threading.Event()
        workers.run(recorder(seen, done, released()))
        assert done.wait(10)
        assert until(lambda: workers._idle == 1)  # back, waiting for the next job
    assert len(set(seen)) == 1  # one thread, started once


def test_a_job_that_finds_every_worker_busy_starts_another() -> None:
    workers = Workers("test-hedge")
    seen: List[int] = []
    hold = threading.Event()
    first, second = threading.Event(), threading.Event()
    workers.run(recorder(seen, first, hold))
    workers.run(recorder(seen, second, hold))  # the first is still running
    assert until(lambda: len(seen) == 2)
    hold.set()
    assert first.wait(10) and second.wait(10)
    assert len(set(seen)) == 2


def test_an_idle_worker_ends() -> None:
    workers = Workers("test-hedge-idle", idle_for=0.05)
    done = threading.Event()
    workers.run(recorder([], done, released()))
    assert done.wait(10)
    named = lambda: [t for t in threading.enumerate() if t.name == "test-hedge-idle"]  # noqa: E731
    assert until(lambda: not named())
    assert workers._idle == 0
    again = threading.Event()
    workers.run(recorder([], again, released()))  # a new thread, since none is left
    assert again.wait(10)
