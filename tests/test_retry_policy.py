"""The policies that keep ten thousand hosts from acting in step, pinned on a fake clock and rng.

Each test fails if its policy is removed: cool-downs that no longer double, cool-downs or daemon
intervals without jitter, an error reporter that logs every repeat (or every cycle of an outage,
whose text changes) at error level instead of once and a reminder every ten minutes.
"""

from __future__ import annotations

from typing import Any, List, Optional

import pytest
from structlog.testing import capture_logs

from helpers.fakes import FakeClock
from regagent.config.model import ConsulConfig
from regagent.consul.pool import ServerPool
from regagent.consul.retry import RetryPolicy, jittered
from regagent.daemon import next_delay
from regagent.errors import ConsulRefused, ConsulUnreachable, NoClusterLeader, RegagentError
from regagent.failures import REMIND_EVERY, ErrorReporter, error_kind

POLICY = RetryPolicy(cooldown_initial=5.0, cooldown_max=300.0, cooldown_jitter=0.2)
MIDDLE = 0.5  # an rng reading that applies no jitter


def test_cooldown_doubles_with_each_failure_up_to_the_maximum() -> None:
    delays = [POLICY.cooldown(n, lambda: MIDDLE) for n in range(1, 9)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]


def test_cooldown_is_jittered_both_ways_by_the_configured_fraction() -> None:
    assert POLICY.cooldown(1, lambda: 0.0) == pytest.approx(4.0)
    assert POLICY.cooldown(1, lambda: 0.999999) == pytest.approx(6.0, abs=1e-4)
    assert POLICY.cooldown(3, lambda: 0.25) == pytest.approx(18.0)


def test_daemon_interval_is_jittered_both_ways() -> None:
    assert next_delay(30.0, 5.0, lambda: MIDDLE) == 30.0
    assert next_delay(30.0, 5.0, lambda: 0.0) == 25.0
    assert next_delay(30.0, 5.0, lambda: 0.75) == 32.5
    assert next_delay(1.0, 5.0, lambda: 0.0) == 0.1  # never a busy loop
    assert jittered(10.0, 2.0, lambda: 1.0) == 12.0


def test_leader_search_asks_every_other_server_once() -> None:
    assert [POLICY.leader_searches(n) for n in (1, 2, 3, 5)] == [0, 1, 2, 4]


def test_call_deadline_is_connect_plus_read_timeout() -> None:
    assert RetryPolicy(connect_timeout=2.0, read_timeout=10.0).call_deadline == 12.0


class Refusing:
    """A client whose every call fails like a dead server."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.calls = 0


def dead_call(client: Any) -> Any:
    import requests

    client.calls += 1
    raise requests.exceptions.ConnectionError("Connection refused")


def test_pool_cools_a_failed_server_by_the_policy_and_retries_after_it() -> None:
    clock = FakeClock()
    readings: List[float] = [0.0, 1.0 - 1e-9, MIDDLE, MIDDLE]
    config = ConsulConfig(servers=("a:1",), cooldown_initial=5.0, cooldown_max=300.0)
    pool = ServerPool(
        config,
        clock=clock,
        client_factory=lambda address, *_: Refusing(address),
        rng=lambda: readings.pop(0),
    )
    server = pool.servers[0]
    with pytest.raises(ConsulUnreachable):
        pool.call("read", dead_call)
    assert server.cooldown_until - clock.now == pytest.approx(4.0)  # 5 s, jittered down
    with pytest.raises(ConsulUnreachable, match="cooling down"):
        pool.call("read", dead_call)  # not asked while it cools down
    assert server.client.calls == 1
    clock.now += 4.0
    with pytest.raises(ConsulUnreachable):
        pool.call("read", dead_call)
    assert server.cooldown_until - clock.now == pytest.approx(12.0, abs=1e-6)  # doubled, up
    clock.now += 12.0
    with pytest.raises(ConsulUnreachable):
        pool.call("read", dead_call)
    assert server.cooldown_until - clock.now == pytest.approx(20.0)  # doubled again
    assert server.client.calls == 3


def events(logs: List[Any], level: Optional[str] = None) -> List[str]:
    return [e["event"] for e in logs if level is None or e["log_level"] == level]


def test_error_reporter_logs_a_repeated_error_once_at_error_level() -> None:
    reporter = ErrorReporter()
    denied = RegagentError("Consul refused the request (403): ACL not found")
    with capture_logs() as logs:
        for _ in range(5):
            reporter.report(denied)
    assert events(logs, "error") == ["sync_failed"]
    assert events(logs, "debug") == ["sync_failed_again"] * 4


def test_error_reporter_logs_again_when_the_error_changes_or_clears() -> None:
    reporter = ErrorReporter()
    with capture_logs() as logs:
        reporter.report(RegagentError("a"))
        reporter.report(RegagentError("b"))
        reporter.report(None)
        reporter.report(None)
        reporter.report(RegagentError("b"))
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("sync_failed", "error"),
        ("sync_failed", "error"),
        ("sync_recovered", "info"),
        ("sync_failed", "error"),
    ]


def test_an_outage_is_one_error_then_a_reminder_every_ten_minutes() -> None:
    """An hour without a server, a cycle every 30 s, each error's text different (the seconds
    to the next retry, the servers tried) and the kind switching between unreachable and no
    leader: two `sync_failed` (one per kind), a reminder every REMIND_EVERY, debug between."""
    clock = FakeClock()
    reporter = ErrorReporter(clock)
    with capture_logs() as logs:
        for cycle in range(120):
            clock.now = 1000.0 + 30 * cycle
            if cycle % 7 == 3:
                reporter.report(NoClusterLeader(f"no leader (says s{cycle % 3}:8500)"))
            else:
                reporter.report(ConsulUnreachable(f"all cooling down (next retry in {cycle}s)"))
        clock.now += 30
        reporter.report(None)
    errors = [(e["event"], e.get("failing_s")) for e in logs if e["log_level"] == "error"]
    assert errors == [
        ("sync_failed", None),
        ("sync_failed", None),  # the first no-leader cycle, 90 s in
        ("sync_still_failing", 690),
        ("sync_still_failing", 1290),
        ("sync_still_failing", 1890),
        ("sync_still_failing", 2490),
        ("sync_still_failing", 3090),
    ]
    assert REMIND_EVERY == 600.0
    assert len(events(logs, "debug")) == 120 - len(errors)
    (recovered,) = [e for e in logs if e["event"] == "sync_recovered"]
    assert recovered["failed_s"] == 3600 and recovered["failed_cycles"] == 120


def test_a_refusal_is_its_text_and_an_outage_its_class() -> None:
    assert error_kind(ConsulUnreachable("a 1s")) == error_kind(ConsulUnreachable("b 2s"))
    assert error_kind(NoClusterLeader("x")) != error_kind(ConsulUnreachable("x"))
    denied = RegagentError("Consul s1 refused the request (403): ACL not found")
    assert error_kind(denied) == str(denied)


def test_one_refusal_from_several_servers_is_one_failure() -> None:
    """A denied token is refused by whichever server a cycle asks: one sync_failed, not one
    per server (a real daemon's rotation test logged two when cycles used two servers)."""
    reporter = ErrorReporter()
    with capture_logs() as logs:
        reporter.report(ConsulRefused("s1:8500", 403, "ACL not found"))
        reporter.report(ConsulRefused("s2:8500", 403, "ACL not found"))
        reporter.report(ConsulRefused("s2:8500", 403, "Permission denied"))
    failed = [e for e in logs if e["event"] == "sync_failed"]
    assert [e["error"] for e in failed] == [
        "Consul s1:8500 refused the request (403): ACL not found",
        "Consul s2:8500 refused the request (403): Permission denied",
    ]
