"""DiscoveryRunner over a fake host: listeners, probe answers and process owners are data.

The runner is the long-lived part of discovery (caches, once-only reports, the state file);
these tests drive it cycle by cycle with an explicit clock, without sockets or processes.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path
from typing import Collection, Dict, Iterable, List, Mapping, Optional, Set

import pytest
from structlog.testing import capture_logs

from regagent.config.model import Config, DiscoveryConfig, SyncConfig
from regagent.discovery import runner as runner_module
from regagent.discovery.listeners import Listener
from regagent.discovery.probe import Exposition, ProbeResult
from regagent.discovery.processes import ProcessInfo, ProcessResolver
from regagent.discovery.runner import DiscoveryRunner
from regagent.discovery.seen import SeenService, format_time
from regagent.model import CRITICAL, PASSING, ActualState, ServiceIntent, ServiceRegistration
from regagent.statedir import Warnings

NODE = "192.0.2.10"
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
PORT = 9100
SID = f"node-exporter-{PORT}"


class FakeHost:
    """What the runner sees: listeners by port and which ports serve node_exporter metrics."""

    def __init__(self) -> None:
        self.listening: Dict[int, List[Listener]] = {}
        self.serving: Set[int] = set()
        self.version = "1.5.0"
        self.probes = 0

    def listen(self, port: int, address: str = "0.0.0.0", *, serving: bool = True) -> None:
        inode = 100_000 + port + 1000 * len(self.listening.get(port, []))
        self.listening.setdefault(port, []).append(Listener(address, port, socket.AF_INET, inode))
        if serving:
            self.serving.add(port)

    def close(self, port: int) -> None:
        self.listening.pop(port, None)
        self.serving.discard(port)

    def listeners(self) -> List[Listener]:
        return [lst for group in self.listening.values() for lst in group]

    def prober(
        self, address: str, port: int, path: str, timeout: float, max_bytes: int
    ) -> ProbeResult:
        self.probes += 1
        url = f"http://{address}:{port}{path}"
        if port not in self.serving:
            return ProbeResult(url, "http", False, "timed out after 2s")
        exposition = Exposition(
            True,
            names=frozenset({"node_exporter_build_info", "node_load1"}),
            build_info={"node_exporter_build_info": {"version": self.version}},
        )
        return ProbeResult(url, "http", True, "", 200, exposition)


class FakeResolver(ProcessResolver):
    """Owners by inode, recording which inodes discovery asked about."""

    def __init__(self, owners: Optional[Mapping[int, ProcessInfo]] = None) -> None:
        super().__init__(proc_root="/nonexistent")
        self.owners = dict(owners or {})
        self.asked: Set[int] = set()

    def resolve(
        self, inodes: Iterable[int], uid_hints: Optional[Mapping[int, int]] = None
    ) -> Dict[int, Optional[ProcessInfo]]:
        wanted = set(inodes)
        self.asked |= wanted
        return {inode: self.owners.get(inode) for inode in wanted}

    def forget_except(self, live_inodes: Collection[int]) -> None:
        pass


@pytest.fixture
def host() -> FakeHost:
    fake = FakeHost()
    fake.listen(PORT)
    return fake


def config_for(tmp_path: Path, **discovery: object) -> Config:
    settings = DiscoveryConfig(port_ranges=((PORT, PORT),), **discovery)  # type: ignore[arg-type]
    return Config(discovery=settings, sync=SyncConfig(state_dir=str(tmp_path)))


def runner_for(host: FakeHost, resolver: Optional[ProcessResolver] = None) -> DiscoveryRunner:
    return DiscoveryRunner(
        list_listeners=host.listeners, prober=host.prober, resolver=resolver or FakeResolver()
    )


def only(intents: Iterable[ServiceIntent]) -> ServiceIntent:
    (intent,) = intents
    return intent


def test_log_events_are_snake_case_keys(host: FakeHost, tmp_path: Path) -> None:
    host.listen(9400, "127.0.0.1")  # a loopback-only exporter: reported, not registered
    config = Config(
        discovery=DiscoveryConfig(port_ranges=((PORT, PORT), (9400, 9400))),
        sync=SyncConfig(state_dir=str(tmp_path), deregister_after=60),
    )
    runner = runner_for(host)
    with capture_logs() as logs:
        runner.cycle(config, NODE, T0)
        host.close(PORT)
        runner.cycle(config, NODE, T0 + 30)
        runner.cycle(config, NODE, T0 + 91)  # deregister_after passed
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
        runner_for(host).run(config, NODE, T0 + 100, actual=ActualState(None, (registered,), ()))
    assert ("discovery_state_adopted", SID) in [(e["event"], e.get("service_id")) for e in logs]


def test_state_file_is_rewritten_on_change_not_every_cycle(
    host: FakeHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saves: List[float] = []
    real_save = runner_module.save_state

    def counting_save(
        path: str, entries: Mapping[str, SeenService], warnings: Optional[Warnings] = None
    ) -> bool:
        saves.append(entries[SID].last_seen)
        return real_save(path, entries, warnings)

    monkeypatch.setattr(runner_module, "save_state", counting_save)
    config = config_for(tmp_path)
    runner = runner_for(host)
    for step in range(20):  # a new exporter, then 9.5 minutes of 30 s cycles
        runner.cycle(config, NODE, T0 + 30 * step)
    assert saves == [T0]
    runner.cycle(config, NODE, T0 + 600)  # last_seen has moved by the coarse step
    runner.cycle(config, NODE, T0 + 900)
    assert saves == [T0, T0 + 600]

    host.close(PORT)
    gone = only(runner.cycle(config, NODE, T0 + 930))
    since = f"not listening on :{PORT} since {format_time(T0 + 600)}"  # the stored last_seen
    assert gone.status == (CRITICAL, since)
    assert only(runner.cycle(config, NODE, T0 + 960)).status == gone.status
    assert only(runner_for(host).cycle(config, NODE, T0 + 990)).status == gone.status  # restart
    assert saves == [T0, T0 + 600]  # nothing changed while it was gone

    host.listen(PORT)
    host.version = "1.6.0"  # back, upgraded: a new registration is saved at once
    back = only(runner.cycle(config, NODE, T0 + 1000))
    assert back.service.meta["exporter_version"] == "1.6.0"
    assert saves == [T0, T0 + 600, T0 + 1000]


def test_a_failing_probe_turns_a_known_exporter_critical_only_after_three_in_a_row(
    host: FakeHost, tmp_path: Path
) -> None:
    config = config_for(tmp_path)
    runner = runner_for(host)
    present = only(runner.cycle(config, NODE, T0))
    assert present.status == (PASSING, f"node_exporter 1.5.0 serving /metrics on :{PORT}")

    host.serving.discard(PORT)  # still listening, but the probe times out
    with capture_logs() as logs:
        first = only(runner.cycle(config, NODE, T0 + 30))
        second = only(runner.cycle(config, NODE, T0 + 60))
    for held in (first, second):  # the last good registration and output: no Consul write
        assert (held.service, held.status) == (present.service, present.status)
    assert [(e["event"], e["failures"], e["reason"]) for e in logs] == [
        ("exporter_probe_failed", 1, "timed out after 2s"),
        ("exporter_probe_failed", 2, "timed out after 2s"),
    ]
    third = only(runner.cycle(config, NODE, T0 + 90))
    assert third.status == (CRITICAL, f"not serving metrics on :{PORT} since {format_time(T0)}")
    assert only(runner.cycle(config, NODE, T0 + 120)).status == third.status

    host.serving.add(PORT)  # recovers at once, and the count starts again
    assert only(runner.cycle(config, NODE, T0 + 150)).status == present.status
    host.serving.discard(PORT)
    assert only(runner.cycle(config, NODE, T0 + 180)).status == present.status


def test_a_vanished_listener_is_critical_at_once(host: FakeHost, tmp_path: Path) -> None:
    config = config_for(tmp_path)
    runner = runner_for(host)
    runner.cycle(config, NODE, T0)
    host.close(PORT)
    gone = only(runner.cycle(config, NODE, T0 + 30))
    assert gone.status == (CRITICAL, f"not listening on :{PORT} since {format_time(T0)}")

    host.listen(PORT, serving=False)  # back on the port, but not serving: nothing to hold
    back = only(runner.cycle(config, NODE, T0 + 60))
    assert back.status == (CRITICAL, f"not serving metrics on :{PORT} since {format_time(T0)}")


def test_a_new_runner_has_no_last_good_result_to_hold(host: FakeHost, tmp_path: Path) -> None:
    """A one-shot `regagent sync` reports what it sees: no memory, no hold."""
    config = config_for(tmp_path)
    runner_for(host).cycle(config, NODE, T0)
    host.serving.discard(PORT)
    (intent,) = runner_for(host).cycle(config, NODE, T0 + 30)
    assert intent.status is not None and intent.status[0] == CRITICAL


def test_one_failure_is_enough_when_so_configured(host: FakeHost, tmp_path: Path) -> None:
    config = replace(
        config_for(tmp_path), sync=SyncConfig(state_dir=str(tmp_path), failures_before_critical=1)
    )
    runner = runner_for(host)
    runner.cycle(config, NODE, T0)
    host.serving.discard(PORT)
    (intent,) = runner.cycle(config, NODE, T0 + 30)
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
    runner = runner_for(host)
    assert len(runner.cycle(config, NODE, T0)) == 10  # a full cycle: ten
    for step in range(1, 4):  # quick passes before the next full cycle: nothing more
        intents, _ = runner.quick_intents(config, NODE, None, T0 + step)
        assert len(intents) == 10
    assert len(runner.cycle(config, NODE, T0 + 30)) == 20  # the next full cycle: ten more
