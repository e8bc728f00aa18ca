"""The daemon loop in-process, on fakes: watchdog policy, STATUS lines, reload and stop, and what
the composition root carries over a reload and adds as regagent's own service."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import yaml

from helpers.fakes import FakeClock
from regagent.app import SURVIVES_RELOAD, build
from regagent.config import load_config
from regagent.config.model import SyncConfig
from regagent.daemon import Daemon, LoopParts, status_text
from regagent.discovery.intents import self_intent
from regagent.errors import ConfigError, ConsulUnreachable, NoClusterLeader
from regagent.liveness import Heartbeat, SystemdWatchdog
from regagent.model import DesiredState, NodeRegistration, ServiceRegistration
from regagent.notify import Notifier
from regagent.report import CycleReport


class Recorder(Notifier):
    """A notifier that keeps what it would have sent."""

    def __init__(self) -> None:
        super().__init__(None)
        self.sent: List[str] = []

    def send(self, *fields: str) -> bool:
        self.sent.append("\n".join(fields))
        return True


def in_sync(services: int = 2, server: str = "10.0.0.2:8500") -> CycleReport:
    regs = tuple(ServiceRegistration(f"s{i}-{i}", f"s{i}", i) for i in range(services))
    desired = DesiredState(NodeRegistration("n", "10.0.0.9"), regs, ())
    return CycleReport(desired=desired, server=server)


class FakeEngine:
    """Counts cycles; calls `hook(daemon)` after each, so a test can ask for a reload or stop."""

    def __init__(self, name: str, hook: Any = None) -> None:
        self.name = name
        self.cycles = 0
        self.hook = hook
        self.daemon: Optional[Daemon] = None

    def cycle(self) -> CycleReport:
        self.cycles += 1
        if self.hook is not None and self.daemon is not None:
            self.hook(self)
        return in_sync()

    def deregister_owned(self) -> List[str]:
        return []


def loop_of(engine: FakeEngine) -> LoopParts:
    return LoopParts(engine, SyncConfig(interval=1.0, jitter=0.0), ("10.0.0.2:8500",))  # type: ignore[arg-type]


def test_watchdog_pings_only_while_the_heartbeat_is_fresh() -> None:
    clock = FakeClock(100.0)
    notifier = Recorder()
    heartbeat = Heartbeat(clock)
    watchdog = SystemdWatchdog(notifier, interval=60.0, heartbeat=heartbeat, stall_limit=60.0)
    assert watchdog.tick()
    clock.now += 59.0
    assert watchdog.tick()  # the last beat is 59s old: still progress
    clock.now += 2.0
    assert not watchdog.tick()  # 61s without a beat: withheld, systemd will restart us
    assert watchdog.withheld
    heartbeat.beat()
    assert watchdog.tick() and not watchdog.withheld  # progress again: pings resume
    assert notifier.sent == ["WATCHDOG=1"] * 3


def test_the_wait_beats_often_enough_for_the_watchdog() -> None:
    daemon = Daemon(loop_of(FakeEngine("a")), notifier=Recorder(), watchdog_interval=60.0)
    assert daemon.watchdog is not None
    assert daemon.watchdog.stall_limit == 60.0
    assert daemon.beat_every is not None and daemon.beat_every <= daemon.watchdog.stall_limit / 2
    assert Daemon(loop_of(FakeEngine("b"))).beat_every is None  # no watchdog: one long wait


def test_status_lines() -> None:
    assert status_text(in_sync(7), 3) == "in sync: 7 services via 10.0.0.2:8500"
    written = in_sync(1)
    written.writes_by_kind = {"register": 2}
    assert status_text(written, 3) == "in sync: 1 services via 10.0.0.2:8500 (2 written)"
    down = CycleReport(error=ConsulUnreachable("no Consul server reachable for read"))
    assert status_text(down, 3) == "no Consul server reachable (3 tried)"
    leaderless = CycleReport(error=NoClusterLeader("the Consul cluster has no leader"))
    assert status_text(leaderless, 3).startswith("sync failed: the Consul cluster has no leader")


def test_reload_swaps_the_loop_and_a_rejected_one_keeps_it() -> None:
    notifier = Recorder()
    new = FakeEngine("new", hook=lambda engine: engine.daemon.request_stop())
    answers: List[Any] = [ConfigError(["a: bad", "b: bad"]), loop_of(new)]

    def reload() -> LoopParts:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    def ask_reload(engine: FakeEngine) -> None:
        assert engine.daemon is not None
        engine.daemon.request_reload()

    old = FakeEngine("old", hook=ask_reload)
    daemon = Daemon(loop_of(old), reload=reload, notifier=notifier)
    old.daemon = new.daemon = daemon
    assert daemon.run(max_cycles=10) == 0
    assert old.cycles == 2  # the rejected reload left it running; the second one replaced it
    assert new.cycles == 1 and daemon.parts.engine is new  # type: ignore[comparison-overlap]
    statuses = [m for m in notifier.sent if m.startswith("STATUS=")]
    assert statuses[0] == "STATUS=configuration reload rejected: 2 errors (old configuration kept)"
    assert statuses[1].endswith(
        "; configuration reload rejected: 2 errors (old configuration kept)"
    )
    assert notifier.sent[0].startswith("READY=1\nSTATUS=in sync")  # after the first cycle
    assert sum(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in notifier.sent) == 2
    assert notifier.sent.count("READY=1") == 2  # once after each reload
    assert notifier.sent.count("STOPPING=1") == 1
    assert daemon.reload_problem is None  # the successful reload cleared it


def config_file(tmp_path: Path, **sections: Any) -> str:
    path = tmp_path / "regagent.yaml"
    base = {
        "consul": {"servers": ["127.0.0.1:1", "127.0.0.1:2"]},
        "node": {"name": "unit-host", "address": "10.0.0.9"},
        "discovery": {"enabled": False},
        "sync": {"state_dir": str(tmp_path)},
        **sections,
    }
    path.write_text(yaml.safe_dump(base))
    return str(path)


def test_own_service_follows_the_listen_address(tmp_path: Path) -> None:
    wildcard = load_config(config_file(tmp_path, telemetry={"listen": "0.0.0.0:9555"}))
    own = self_intent(wildcard, "10.0.0.9")
    assert own is not None and own.source == "self"
    assert (own.service.id, own.service.name, own.service.address) == (
        "regagent-9555",
        "regagent",
        "10.0.0.9",
    )
    assert own.service.meta["managed-by"] == "regagent"
    assert own.service.meta["metrics_path"] == "/metrics"
    assert own.status is not None and own.status[0] == "passing"
    specific = load_config(config_file(tmp_path, telemetry={"listen": "10.0.0.7:9555"}))
    assert self_intent(specific, "10.0.0.9").service.address == "10.0.0.7"  # type: ignore[union-attr]
    loopback = load_config(config_file(tmp_path, telemetry={"listen": "127.0.0.1:9555"}))
    assert self_intent(loopback, "10.0.0.9") is None  # Prometheus could not reach it
    assert self_intent(loopback, "127.0.0.1") is not None  # a single-host set-up
    assert self_intent(load_config(config_file(tmp_path)), "10.0.0.9") is None  # telemetry off


TELEMETRY = {"listen": "127.0.0.1:9555"}  # build binds nothing: the daemon serves it


def test_a_rebuild_keeps_what_must_survive_a_reload(tmp_path: Path) -> None:
    first = build(load_config(config_file(tmp_path, telemetry=TELEMETRY)))
    first.pool.servers[0].failures = 3
    first.pool.servers[0].cooldown_until = 1e12
    first.pool.current = 1
    first.health.hold("x-1", ("passing", "ok"))
    second = build(
        load_config(config_file(tmp_path, sync={"state_dir": str(tmp_path)}, telemetry=TELEMETRY)),
        previous=first,
    )
    assert second.metrics is first.metrics  # counters continue
    assert second.heartbeat is first.heartbeat
    assert second.health is first.health and second.discovery is first.discovery
    assert second.pool is not first.pool
    assert second.pool.servers[0].cooldown_until == 1e12 and second.pool.current == 1
    assert second.pool.observer is not None  # requests keep being counted and beating
    fresh = build(load_config(config_file(tmp_path, telemetry=TELEMETRY)))
    assert fresh.metrics is not first.metrics  # two apps share no state


def test_metrics_exist_once_a_configuration_serves_them(tmp_path: Path) -> None:
    """Without telemetry.listen there are no metrics (and no prometheus-client import); a
    reload that turns it on creates them, and one that turns it off keeps them for later."""
    quiet = build(load_config(config_file(tmp_path)))
    assert quiet.metrics is None and quiet.pool.observer is not None  # still beats
    served = build(load_config(config_file(tmp_path, telemetry=TELEMETRY)), previous=quiet)
    assert served.metrics is not None
    assert served.metrics.pool is served.pool
    again = build(load_config(config_file(tmp_path)), previous=served)
    assert again.metrics is served.metrics


def test_a_reload_keeps_each_survivor_and_tells_it_the_new_configuration(tmp_path: Path) -> None:
    first = build(load_config(config_file(tmp_path, telemetry=TELEMETRY)))
    new = load_config(
        config_file(
            tmp_path,
            sync={"state_dir": str(tmp_path), "failures_before_critical": 5},
            discovery={"enabled": True, "watch_interval": "2s"},
            telemetry=TELEMETRY,
        )
    )
    second = build(new, previous=first)
    assert first.metrics is not None
    adopted = {"pool", "identity"}  # rebuilt from the configuration, taking over the state
    for name in SURVIVES_RELOAD:
        assert (getattr(second, name) is getattr(first, name)) == (name not in adopted), name
    assert second.health.failures_before_critical == 5
    assert second.discovery.config is new and second.discovery.sensor.config is new
    assert second.engine.source is second.discovery
    assert second.watch is not None and second.watch.sensor is second.discovery.sensor
    assert second.watch.interval == 2.0


def test_the_first_sync_waits_a_random_part_of_the_jitter() -> None:
    """A fleet restarted at once (a package upgrade) spreads its first reads over the jitter."""
    engine = FakeEngine("first", hook=lambda e: e.daemon.request_stop())
    parts = LoopParts(engine, SyncConfig(interval=30.0, jitter=2.0), ("10.0.0.2:8500",))  # type: ignore[arg-type]
    daemon = Daemon(parts, rng=lambda: 0.5)
    engine.daemon = daemon
    waits: List[float] = []
    real_wait = daemon._wait_for_next_cycle

    def recorded(delay: float) -> None:
        waits.append(delay)
        real_wait(0.0)

    daemon._wait_for_next_cycle = recorded  # type: ignore[method-assign]
    assert daemon.run(max_cycles=1) == 0
    assert waits[0] == 1.0  # half the 2 s jitter (rng 0.5), before the first cycle
    assert engine.cycles == 1


def test_a_bug_that_crashes_every_cycle_logs_its_traceback_once_per_ten_minutes() -> None:
    from structlog.testing import capture_logs

    class Crashing(FakeEngine):
        def cycle(self) -> CycleReport:
            raise KeyError("a bug")

    clock = FakeClock(100.0)
    daemon = Daemon(loop_of(Crashing("bug")), notifier=Recorder(), clock=clock)
    with capture_logs() as logs:
        for _ in range(40):  # 20 minutes of cycles every 30 s
            assert "internal error" in str(daemon.cycle().error)
            clock.now += 30
    crashes = [e for e in logs if e["event"] == "sync_cycle_crashed"]
    assert [c["suppressed"] for c in crashes] == [0, 19]
