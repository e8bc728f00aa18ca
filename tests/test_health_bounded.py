"""The one bounded GET holds against hostile local servers (design decision 11).

Each server is a real process on loopback (tests/data/discovery/fake_server.py). A probe or a
check must come back by its deadline however the server behaves; the test gives it a generous
bound and fails if it is still running then (no wall-clock assertion on how fast it was).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import threading
from typing import Callable, Iterator, List, Optional, TypeVar

import pytest

from helpers.discovery import FAKE, stop, wait_listening
from helpers.ports import free_port
from regagent.discovery.probe import ProbeResult, probe_metrics
from regagent.health.checks import http_check
from regagent.health.http import GetFailed, bounded_get

T = TypeVar("T")


@pytest.fixture
def hostile() -> Iterator[Callable[[str], int]]:
    """Starts a fake server of the given mode on a free loopback port; stopped by pid."""
    procs: List[subprocess.Popen[bytes]] = []

    def start(mode: str) -> int:
        port = free_port()
        argv = [sys.executable, FAKE, mode, "127.0.0.1", str(port), "--lifetime", "120"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_listening(port, proc)
        return port

    try:
        yield start
    finally:
        for proc in procs:
            stop(proc)


def within(bound: float, work: Callable[[], T]) -> T:
    """Runs `work` in a thread and fails the test if it has not returned after `bound` s."""
    result: List[T] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"still running after {bound}s: the deadline did not hold"
    return result[0]


@pytest.mark.parametrize("mode", ["bodydrip", "headerdrip", "drip", "silent"])
def test_the_discovery_probe_ends_by_its_deadline(hostile: Callable[[str], int], mode: str) -> None:
    port = hostile(mode)
    found: ProbeResult = within(
        15, lambda: probe_metrics("127.0.0.1", port, "/metrics", 0.5, 4 * 1024 * 1024)
    )
    assert (found.ok, found.reason) == (False, "timed out after 0.5s")


@pytest.mark.parametrize("mode", ["bodydrip", "headerdrip"])
def test_a_health_check_ends_by_its_deadline(hostile: Callable[[str], int], mode: str) -> None:
    port = hostile(mode)
    url = f"http://127.0.0.1:{port}/metrics"
    status, output = within(15, lambda: http_check(url, 0.5))
    if mode == "headerdrip":
        assert (status, output) == ("critical", f"HTTP GET {url}: timed out")
    else:  # the status line and headers came in time: the check judges those, as Consul's does
        assert (status, output) == ("passing", f"HTTP GET {url}: 200 OK")


def test_an_endless_answer_is_cut_at_the_byte_cap(hostile: Callable[[str], int]) -> None:
    port = hostile("endless")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    answer = within(
        30,
        lambda: bounded_get(
            f"http://127.0.0.1:{port}/metrics", timeout=10.0, max_bytes=1024 * 1024
        ),
    )
    assert answer.truncated and len(answer.body) == 1024 * 1024
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024  # a cap of 1 MiB costs megabytes, not the endless stream


def test_a_refused_connection_is_reported_in_the_shared_vocabulary() -> None:
    port = free_port()
    failure: Optional[GetFailed] = None
    try:
        bounded_get(f"http://127.0.0.1:{port}/", timeout=1.0, max_bytes=10)
    except GetFailed as exc:
        failure = exc
    assert failure is not None and failure.reason == "connection refused"
    assert not failure.timed_out
