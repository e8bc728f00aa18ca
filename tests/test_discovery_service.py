"""Discovery over a fake host: listeners, probe answers and process owners are data.

`Discovery` is the long-lived part of discovery (caches, once-only reports, the state file);
these tests drive it pass by pass with an explicit clock, without sockets or processes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable, List, Mapping, Optional

import pytest
from structlog.testing import capture_logs

from helpers.fakes import FakeHost, full_pass
from regagent.config.model import Config, DiscoveryConfig, SyncConfig
from regagent.discovery import service as service_module
from regagent.discovery.seen import SeenService
from regagent.model import CRITICAL, PASSING, ActualState, ServiceIntent, ServiceRegistration
from regagent.rules import utc_text
from regagent.statedir import Warnings

NODE = "192.0.2.10"
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
PORT = 9100
SID = f"node-exporter-{PORT}"


@pytest.fixture
def host() -> FakeHost:
    fake = FakeHost()
    fake.listen(PORT)
    return fake


def config_for(tmp_path: Path, **discovery: object) -> Config:
    settings = DiscoveryConfig(port_ranges=((PORT, PORT),), **discovery)  # type: ignore[arg-type]
    return Config(discovery=settings, sync=SyncConfig(state_dir=str(tmp_path)))


def only(intents: Iterable[ServiceIntent]) -> ServiceIntent:
    (intent,) = intents
    return intent


def test_log_events_are_snake_case_keys(host: FakeHost, tmp_path: Path) -> None:
    host.listen(9400, "127.0.0.1")  # a loopback-only exporter: reported, not registered
    config = Config(
        discovery=DiscoveryConfig(port_ranges=((PORT, PORT), (9400, 9400))),
        sync=SyncConfig(state_dir=str(tmp_path), deregister_after=60),
    )
    discovery = host.discovery(config)
    with capture_logs() as logs:
        full_pass(discovery, NODE, T0)
        host.close(PORT)
        full_pass(discovery, NODE, T0 + 30)
        full_pass(discovery, NODE, T0 + 91)  # deregister_after passed
    events = [(e["event"], e.get("service_id")) for e in logs]
    assert events == [
        ("exporter_not_registered", None),
        ("exporter_discovered", SID),
        ("exporter_vanished", SID),
        ("exporter_expired", SID),
    ]

    # The state file is gone while Consul still holds the service: adopted, and said so.
    meta = {"exporter": "node_exporter", "managed-by": "regagent"}
    registered = ServiceRegistration(SID, "node-exporter", PORT, NODE, ("node_exporter",), meta)
    with capture_logs() as logs:
        host.discovery(config).intents(NODE, ActualState(None, (registered,), ()), now=T0 + 100)
    assert ("discovery_state_adopted", SID) in [(e["event"], e.get("service_id")) for e in logs]


def test_state_file_is_rewritten_on_change_not_every_cycle(
    host: FakeHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saves: List[float] = []
    real_save = service_module.save_state

    def counting_save(
        path: str, entries: Mapping[str, SeenService], warnings: Optional[Warnings] = None
    ) -> bool:
        saves.append(entries[SID].last_seen)
        return real_save(path, entries, warnings)

    monkeypatch.setattr(service_module, "save_state", counting_save)
    config = config_for(tmp_path)
    discovery = host.discovery(config)
    for step in range(20):  # a new exporter, then 9.5 minutes of 30 s cycles
        full_pass(discovery, NODE, T0 + 30 * step)
    assert saves == [T0]
    full_pass(discovery, NODE, T0 + 600)  # last_seen has moved by the coarse step
    full_pass(discovery, NODE, T0 + 900)
    assert saves == [T0, T0 + 600]

    host.close(PORT)
    gone = only(full_pass(discovery, NODE, T0 + 930))
    since = f"not listening on :{PORT} since {utc_text(T0 + 600)}"  # the stored last_seen
    assert gone.status == (CRITICAL, since)
    assert only(full_pass(discovery, NODE, T0 + 960)).status == gone.status
    assert only(full_pass(host.discovery(config), NODE, T0 + 990)).status == gone.status  # restart
    assert saves == [T0, T0 + 600]  # nothing changed while it was gone

    host.listen(PORT)
    host.version = "1.6.0"  # back, upgraded: a new registration is saved at once
    back = only(full_pass(discovery, NODE, T0 + 1000))
    assert back.service.meta["exporter_version"] == "1.6.0"
    assert saves == [T0, T0 + 600, T0 + 1000]


def test_a_failing_probe_turns_a_known_exporter_critical_only_after_three_in_a_row(
    host: FakeHost, tmp_path: Path
) -> None:
    config = config_for(tmp_path)
    discovery = host.discovery(config)
    present = only(full_pass(discovery, NODE, T0))
    assert present.status == (PASSING, f"node_exporter 1.5.0 serving /metrics on :{PORT}")

    host.serving.discard(PORT)  # still listening, but the probe times out
    with capture_logs() as logs:
        first = only(full_pass(discovery, NODE, T0 + 30))
        second = only(full_pass(discovery, NODE, T0 + 60))
    for held in (first, second):  # the last good registration and output: no Consul write
        assert (held.service, held.status) == (present.service, present.status)
    assert [(e["event"], e["failures"], e["reason"]) for e in logs] == [
        ("exporter_probe_failed", 1, "timed out after 2s"),
        ("exporter_probe_failed", 2, "timed out after 2s"),
    ]
    third = only(full_pass(discovery, NODE, T0 + 90))
    assert third.status == (CRITICAL, f"not serving metrics on :{PORT} since {utc_text(T0)}")
    assert only(full_pass(discovery, NODE, T0 + 120)).status == third.status

    host.serving.add(PORT)  # recovers at once, and the count starts again
    assert only(full_pass(discovery, NODE, T0 + 150)).status == present.status
    host.serving.discard(PORT)
    assert only(full_pass(discovery, NODE, T0 + 180)).status == present.status


def test_a_vanished_listener_is_critical_at_once(host: FakeHost, tmp_path: Path) -> None:
    config = config_for(tmp_path)
    discovery = host.discovery(config)
    full_pass(discovery, NODE, T0)
    host.close(PORT)
    gone = only(full_pass(discovery, NODE, T0 + 30))
    assert gone.status == (CRITICAL, f"not listening on :{PORT} since {utc_text(T0)}")

    host.listen(PORT, serving=False)  # back on the port, but not serving: nothing to hold
    back = only(full_pass(discovery, NODE, T0 + 60))
    assert back.status == (CRITICAL, f"not serving metrics on :{PORT} since {utc_text(T0)}")


def test_a_new_discovery_has_no_last_good_result_to_hold(host: FakeHost, tmp_path: Path) -> None:
    """A one-shot `regagent sync` reports what it sees: no memory, no hold."""
    config = config_for(tmp_path)
    full_pass(host.discovery(config), NODE, T0)
    host.serving.discard(PORT)
    (intent,) = full_pass(host.discovery(config), NODE, T0 + 30)
    assert intent.status is not None and intent.status[0] == CRITICAL


def test_one_failure_is_enough_when_so_configured(host: FakeHost, tmp_path: Path) -> None:
    config = replace(
        config_for(tmp_path), sync=SyncConfig(state_dir=str(tmp_path), failures_before_critical=1)
    )
    discovery = host.discovery(config)
    full_pass(discovery, NODE, T0)
    host.serving.discard(PORT)
    (intent,) = full_pass(discovery, NODE, T0 + 30)
    assert intent.status is not None and intent.status[0] == CRITICAL


def test_passes_between_full_cycles_share_the_cap_on_new_exporters(tmp_path: Path) -> None:
    """The watch looks every second: the cap on new registrations must hold per full cycle,
    not per look, or a local process opening ports would get ten a second."""
    host = FakeHost()
    ports = range(20000, 20025)
    for port in ports:
        host.listen(port)
    config = replace(
        config_for(tmp_path, max_new_per_cycle=10),
        discovery=DiscoveryConfig(port_ranges=((20000, 20024),), max_new_per_cycle=10),
    )
    discovery = host.discovery(config)
    assert len(full_pass(discovery, NODE, T0)) == 10  # a full cycle: ten
    for step in range(1, 4):  # quick passes before the next full cycle: nothing more
        intents, _ = discovery.intents(NODE, None, discovery.sensor.look(), now=T0 + step)
        assert len(intents.intents) == 10
    assert len(full_pass(discovery, NODE, T0 + 30)) == 20  # the next full cycle: ten more


def test_with_discovery_off_the_exporter_table_is_never_read(tmp_path: Path) -> None:
    """Static services only: no exporter table in memory (1 MB, bench/footprint.py)."""
    from regagent.discovery.exporters import load_exporter_table

    config = Config(
        discovery=DiscoveryConfig(enabled=False),
        sync=SyncConfig(state_dir=str(tmp_path)),
    )
    load_exporter_table.cache_clear()
    discovery = FakeHost().discovery(config)
    assert full_pass(discovery, NODE, T0) == ()
    assert load_exporter_table.cache_info().currsize == 0
    discovery.sensor.could_matter(PORT)  # what needs it reads it, once
    assert load_exporter_table.cache_info().currsize == 1
