"""Health checks run on the host: stable output texts and flap protection.

Servers are in-process threads on loopback, shut down when each test ends.
"""

from __future__ import annotations

import socket

from regagent.checks import FlapGuard, HealthChecks
from regagent.model import CRITICAL, PASSING, WARNING, HealthProbe

GOOD = (PASSING, "HTTP GET http://127.0.0.1:9100/metrics: 200 OK")
BAD = (CRITICAL, "HTTP GET http://127.0.0.1:9100/metrics: timed out")


def test_flap_guard_holds_the_last_good_result_through_two_failures() -> None:
    guard: FlapGuard[str] = FlapGuard(3)
    assert guard.observe("a", GOOD) == GOOD
    assert [guard.observe("a", BAD) for _ in range(4)] == [GOOD, GOOD, BAD, BAD]
    assert guard.failures("a") == 4
    assert guard.observe("a", GOOD) == GOOD  # recovery shows at once
    assert guard.failures("a") == 0
    assert guard.observe("a", BAD) == GOOD  # and the count starts again


def test_flap_guard_without_a_good_result_reports_failures_at_once() -> None:
    guard: FlapGuard[str] = FlapGuard(3)
    assert guard.observe("new", BAD) == BAD
    guard.observe("gone", GOOD)
    guard.forget("gone")
    assert guard.observe("gone", BAD) == BAD
    guard.observe("dropped", GOOD)
    guard.retain(["new"])
    assert guard.observe("dropped", BAD) == BAD


def test_flap_guard_counts_only_critical_as_failure() -> None:
    guard: FlapGuard[str] = FlapGuard(2)
    warning = (WARNING, "HTTP GET http://127.0.0.1:9100/metrics: 429 Too Many Requests")
    guard.observe("a", GOOD)
    assert guard.observe("a", warning) == warning
    assert guard.observe("a", BAD) == warning  # the last result that was not a failure


def test_flap_guard_of_one_holds_nothing() -> None:
    guard: FlapGuard[str] = FlapGuard(1)
    guard.observe("a", GOOD)
    assert guard.observe("a", BAD) == BAD


def test_health_checks_hold_a_static_service_through_a_short_outage() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    probe = HealthProbe("tcp", f"127.0.0.1:{port}", 1.0)
    checks = HealthChecks(failures_before_critical=2)
    try:
        up = checks.run([probe])[probe]
        assert up == (PASSING, f"TCP connect 127.0.0.1:{port}: success")
    finally:
        server.close()
    assert checks.run([probe])[probe] == up
    assert checks.run([probe])[probe] == (
        CRITICAL,
        f"TCP connect 127.0.0.1:{port}: connection refused",
    )
