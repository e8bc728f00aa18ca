"""The log throttle, pinned on a fake clock: first line at once, then one per interval per kind,
each carrying the count of those left out; memory bounded."""

from __future__ import annotations

from helpers.fakes import FakeClock
from regagent.throttle import LogThrottle


def test_one_line_per_kind_per_interval_with_the_count_left_out() -> None:
    clock = FakeClock()
    throttle = LogThrottle(60.0, clock)
    logged = []
    for second in range(180):  # the same event every second for three minutes
        clock.now = 1000.0 + second
        said = throttle.admit("reset")
        if said is not None:
            logged.append((second, said))
    assert logged == [(0, 0), (60, 59), (120, 59)]
    assert throttle.admit("other") == 0  # another kind is not held back


def test_kinds_remembered_are_bounded() -> None:
    clock = FakeClock()
    throttle = LogThrottle(60.0, clock, max_kinds=3)
    for kind in ("a", "b", "c", "d"):
        assert throttle.admit(kind) == 0
    assert throttle.admit("d") is None  # remembered
    assert throttle.admit("a") == 0  # forgotten (the oldest): logged again, memory kept at 3
