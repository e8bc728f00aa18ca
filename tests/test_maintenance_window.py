"""The maintenance window's rules (pure), its file in the state directory, and its metric."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from regagent.maintenance.metric import NAME, MaintenanceCollector
from regagent.maintenance.store import MaintenanceStateError, MaintenanceStore
from regagent.maintenance.window import (
    ENDED_SHOWN_FOR,
    MAX_REASON,
    MAX_WINDOW,
    Window,
    WindowError,
    checked_reason,
    new_window,
    parse_window,
    window_json,
    window_length,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800.0), ("2h", 7200.0), ("1d", 86400.0), ("7d", MAX_WINDOW)]
)
def test_window_lengths(text: str, seconds: float) -> None:
    assert window_length(text) == seconds


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("30", "'30' is not a duration (use e.g. 30s, 5m, 72h)"),
        ("", "is not a duration"),
        ("soon", "is not a duration"),
        ("-5m", "is not a duration"),
        ("0s", "at least 1s"),
        ("500ms", "at least 1s"),
        ("8d", "at most 7d (start a new one when it ends)"),
        ("169h", "at most 7d"),
    ],
)
def test_bad_window_lengths_say_why(text: str, complaint: str) -> None:
    with pytest.raises(WindowError, match=r"^--for") as raised:
        window_length(text)
    assert complaint in str(raised.value)


def test_reason_is_trimmed_printable_and_bounded() -> None:
    assert checked_reason("  kernel upgrade  ") == "kernel upgrade"
    assert checked_reason("Wartung: Kühlung") == "Wartung: Kühlung"
    assert checked_reason("x" * MAX_REASON) == "x" * MAX_REASON
    for bad, complaint in [
        ("", "say why"),
        ("   ", "say why"),
        ("two\nlines", "U+000A"),
        ("\x1b[2Jclear", "U+001B"),
        ("bidi\u202etext", "U+202E"),
        ("x" * (MAX_REASON + 1), f"at most {MAX_REASON}"),
    ]:
        with pytest.raises(WindowError, match=r"^--reason") as raised:
            checked_reason(bad)
        assert complaint in str(raised.value), bad


def test_a_window_runs_from_since_until_until_and_stops_early() -> None:
    window = new_window("reboot", 1800.0, NOW)
    assert (window.since, window.until, window.stopped) == (NOW, NOW + 1800.0, None)
    assert window.active(NOW) and window.active(NOW + 1799.9)
    assert not window.active(NOW + 1800.0) and window.state(NOW + 1800.0) == "expired"
    assert window.remaining(NOW + 600.0) == 1200.0 and window.remaining(NOW + 9999) == 0.0
    stopped = window.stop(NOW + 60.0)
    assert stopped.until == stopped.stopped == NOW + 60.0
    assert not stopped.active(NOW + 60.0) and stopped.state(NOW + 61.0) == "stopped"
    assert window.stop(NOW + 3600.0) == window  # already over: unchanged


def test_the_end_time_is_shown_for_an_hour_after_the_end() -> None:
    window = new_window("reboot", 60.0, NOW)
    assert window.shown(NOW) and window.shown(NOW + 60.0 + ENDED_SHOWN_FOR - 1)
    assert not window.shown(NOW + 60.0 + ENDED_SHOWN_FOR)


def test_the_record_round_trips_and_a_foreign_one_is_refused() -> None:
    window = Window("reboot", NOW, NOW + 60.0, stopped=None)
    assert parse_window(window_json(window)) == window
    stopped = window.stop(NOW + 1)
    assert parse_window(window_json(stopped)) == stopped
    for text in [
        "",
        "[]",
        '{"version": 2}',
        '{"version": 1, "reason": "", "since": 1, "until": 2, "stopped": null}',
        '{"version": 1, "reason": "x\\u001b", "since": 1, "until": 2, "stopped": null}',
        '{"version": 1, "reason": "x", "since": "1", "until": 2, "stopped": null}',
        '{"version": 1, "reason": "x", "since": true, "until": 2, "stopped": null}',
        '{"version": 1, "reason": "x", "since": 5, "until": 2, "stopped": null}',
        '{"version": 1, "reason": "x", "since": 1, "until": 1e12, "stopped": null}',
        '{"version": 1, "reason": "x", "since": 1, "until": 2, "stopped": NaN}',
    ]:
        with pytest.raises(WindowError):
            parse_window(text)


def test_the_store_writes_atomically_mode_600_and_reads_back(tmp_path: Path) -> None:
    store = MaintenanceStore(str(tmp_path / "state"))
    assert store.read() is None and store.load() is None
    window = new_window("reboot", 60.0, NOW)
    store.save(window)
    assert store.read() == window == store.load()
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["maintenance.json"]


def test_the_store_refuses_what_regagent_did_not_write(tmp_path: Path) -> None:
    store = MaintenanceStore(str(tmp_path))
    Path(store.path).write_text("not json")
    Path(store.path).chmod(0o600)
    assert store.read() is None  # the daemon goes on without a window
    with pytest.raises(MaintenanceStateError, match="is not JSON; `regagent maint start`"):
        store.load()
    Path(store.path).write_text(window_json(new_window("reboot", 60.0, NOW)))
    Path(store.path).chmod(0o666)  # anyone could have written it
    assert store.read() is None
    with pytest.raises(MaintenanceStateError, match="writable by group and others"):
        store.load()
    store.remove()
    assert store.load() is None


def test_an_untrusted_state_directory_is_not_written(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    store = MaintenanceStore(str(tmp_path))
    with pytest.raises(MaintenanceStateError, match="cannot record the window: state directory"):
        store.save(new_window("reboot", 60.0, NOW))
    assert not Path(store.path).exists()


def test_the_metric_is_read_from_the_file_at_each_scrape(tmp_path: Path) -> None:
    clock = [NOW]
    store = MaintenanceStore(str(tmp_path / "state"))
    registry = CollectorRegistry()
    registry.register(MaintenanceCollector(store, clock=lambda: clock[0]))

    def value() -> object:
        return registry.get_sample_value(NAME)

    assert value() is None  # no window: no series
    store.save(new_window("reboot", 600.0, NOW))
    assert value() == NOW + 600.0
    assert f"# TYPE {NAME} gauge" in generate_latest(registry).decode()
    clock[0] = NOW + 60.0
    store.save(store.load().stop(clock[0]))  # type: ignore[union-attr]
    assert value() == NOW + 60.0  # the new, past end: a lookback's last value says "over"
    clock[0] = NOW + 60.0 + ENDED_SHOWN_FOR
    assert value() is None


def test_the_claim_owns_the_check_always_and_wants_it_while_the_window_runs() -> None:
    from regagent.maintenance.check import maintenance_claim
    from regagent.model import NodeCheck

    window = Window("kernel upgrade", NOW, NOW + 1800.0)
    for ended in (None, window.stop(NOW + 5), window):
        claim = maintenance_claim(ended, NOW + 1800.0 if ended is window else NOW + 10)
        assert claim.owned == {"_node_maintenance"} and claim.wanted == ()
    claim = maintenance_claim(window, NOW + 60)
    assert claim.wanted == (
        NodeCheck(
            "_node_maintenance",
            "Node Maintenance Mode",
            "critical",
            output="regagent maint: in maintenance until 2027-01-15T08:30:00Z",
            notes="kernel upgrade",
        ),
    )


def test_a_window_ending_before_the_next_cycle_brings_the_cycle_forward() -> None:
    from regagent.daemon import sooner

    assert sooner(30.0, None, 5.0, rng=lambda: 0.5) == 30.0  # nothing due
    assert sooner(30.0, 40.0, 5.0, rng=lambda: 0.5) == 30.0  # due after the interval anyway
    assert sooner(30.0, 10.0, 5.0, rng=lambda: 0.5) == 12.5  # due, plus part of the jitter
    assert sooner(30.0, 10.0, 5.0, rng=lambda: 0.0) == 10.0
    assert sooner(30.0, 29.0, 5.0, rng=lambda: 0.99) == 30.0  # never past the interval
    assert sooner(30.0, -3.0, 0.0, rng=lambda: 0.0) == 0.1  # overdue: at once, not in a spin


def test_the_checks_say_when_the_window_ends(tmp_path: Path) -> None:
    from regagent.maintenance.check import END_MARGIN, MaintenanceChecks

    clock = [NOW]
    store = MaintenanceStore(str(tmp_path))
    checks = MaintenanceChecks(store, clock=lambda: clock[0])
    assert checks.due() is None
    store.save(new_window("reboot", 600.0, NOW))
    clock[0] = NOW + 100.0
    assert checks.due() == 500.0 + END_MARGIN
    assert [c.check_id for c in checks.node_checks(None).wanted] == ["_node_maintenance"]
    clock[0] = NOW + 600.0
    assert checks.due() is None and checks.node_checks(None).wanted == ()


def test_the_deploy_rules_look_back_as_far_as_the_longest_window() -> None:
    """A host down since the start of the longest window is still known to be in it at its
    last minute only if the rules' lookback covers the whole window."""
    from regagent.rules import format_duration

    rules = Path(__file__).resolve().parent.parent / "deploy/prometheus/rules/alerts.rules.yml"
    window = format_duration(MAX_WINDOW)
    lookback = f"last_over_time(regagent_maintenance_ends_timestamp_seconds[{window}])"
    assert lookback in rules.read_text()
