"""The watch's policies on fake clocks: probe reuse and retries, the partial plan, the hold-off."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import pytest
from structlog.testing import capture_logs

from helpers.fakes import NO_CHANGE, NODE, FakeClock, FakeIntents, FakeRegistrar
from regagent.app import build
from regagent.config import load_config
from regagent.config.model import Config
from regagent.discovery.listeners import Listener, ListenerReader, Listing, listening_sockets
from regagent.discovery.probe import ProbeResult
from regagent.discovery.probe_cache import RETRY_DELAYS, ProbeCache
from regagent.discovery.sensor import Change, Sensor
from regagent.engine import PartialReport, SyncEngine
from regagent.errors import ConfigError, RegagentError
from regagent.health import Health
from regagent.model import (
    CRITICAL,
    PASSING,
    ActualState,
    CheckState,
    DesiredState,
    ServiceIntent,
    ServiceRegistration,
    Source,
    canonical_service,
    service_check_id,
)
from regagent.plan import Plan, plan
from regagent.report import CycleReport
from regagent.watch import FAST_WRITE_HOLDOFF, Watch


class Prober:
    """Answers from a script of ok/not ok per port; counts calls."""

    def __init__(self) -> None:
        self.ok: Dict[int, bool] = {}
        self.calls: List[int] = []

    def __call__(self, address: str, port: int, path: str, t: float, n: int) -> ProbeResult:
        self.calls.append(port)
        good = self.ok.get(port, True)
        return ProbeResult(f"http://{address}:{port}{path}", "http", good, "" if good else "503")


def probe(cache: ProbeCache, port: int) -> bool:
    return cache.probe("127.0.0.1", port, "/metrics", 1.0, 1000).ok


def test_a_quick_pass_probes_only_new_listeners_and_a_full_pass_probes_all() -> None:
    prober, clock = Prober(), FakeClock()
    cache = ProbeCache(prober, clock)
    cache.begin({9100: frozenset({11}), 9200: frozenset({12})}, quick=False)
    probe(cache, 9100), probe(cache, 9200)
    cache.begin({9100: frozenset({11}), 9200: frozenset({12}), 9300: frozenset({13})}, quick=True)
    probe(cache, 9100), probe(cache, 9200), probe(cache, 9300)
    assert prober.calls == [9100, 9200, 9300]
    assert cache.probed_ports() == {9300}
    # A restarted exporter is a new socket (new inode): probed again by a quick pass.
    cache.begin({9100: frozenset({21}), 9200: frozenset({12})}, quick=True)
    probe(cache, 9100), probe(cache, 9200)
    assert prober.calls[3:] == [9100]
    cache.begin({9100: frozenset({21}), 9200: frozenset({12})}, quick=False)
    probe(cache, 9100), probe(cache, 9200)
    assert prober.calls[4:] == [9100, 9200], "the full cycle's probe is the health check"
    # An unknown inode (0) is never taken for the same listener.
    cache.begin({9400: frozenset({0})}, quick=True)
    probe(cache, 9400), probe(cache, 9400)
    assert prober.calls[6:] == [9400, 9400]


def test_a_slow_starter_is_retried_on_schedule_then_judged_and_a_good_one_never_early() -> None:
    prober, clock = Prober(), FakeClock()
    cache = ProbeCache(prober, clock)
    prober.ok[9100] = False
    listeners = {9100: frozenset({5}), 9200: frozenset({6})}
    cache.begin(listeners, quick=True)
    assert not probe(cache, 9100) and probe(cache, 9200)
    retries = 0
    for delay in RETRY_DELAYS:
        next_retry = cache.next_retry()
        assert next_retry == clock.now + delay
        clock.now = next_retry - 0.01
        cache.begin(listeners, quick=True)
        probe(cache, 9100), probe(cache, 9200)
        assert cache.probed_ports() == set(), "not due yet"
        clock.now = next_retry
        assert cache.retry_ports(clock.now) == {9100}
        cache.begin(listeners, quick=True)
        probe(cache, 9100), probe(cache, 9200)
        assert cache.probed_ports() == {9100}
        retries += 1
    assert retries == len(RETRY_DELAYS) and cache.next_retry() is None, "judged"
    assert prober.calls.count(9200) == 1, "a listener that answered well is not retried"
    # Once it has answered well, failures are the full cycle's to count: no early retry.
    prober.ok[9100] = True
    cache.begin(listeners, quick=False)
    probe(cache, 9100)
    prober.ok[9100] = False
    cache.begin(listeners, quick=False)
    assert not probe(cache, 9100)
    assert cache.next_retry() is None


# --- the partial cycle -------------------------------------------------------------------


def service(sid: str, port: int) -> ServiceRegistration:
    return canonical_service(ServiceRegistration(sid, sid.rsplit("-", 1)[0], port, "192.0.2.1"))


def check(sid: str, status: str, output: str = "ok") -> CheckState:
    return CheckState(service_check_id(sid), sid, f"{sid.rsplit('-', 1)[0]} health", status, output)


def exporter(sid: str, port: int, status: str = PASSING) -> ServiceIntent:
    return ServiceIntent(service(sid, port), Source.DISCOVERY, status=(status, "ok"))


def test_a_partial_cycle_writes_only_the_changed_ports_services_and_never_deregisters() -> None:
    kept = ActualState(
        node=NODE,
        services=(service("old-1", 1), service("a-9100", 9100), service("s-8080", 8080)),
        checks=(check("old-1", PASSING), check("a-9100", PASSING), check("s-8080", PASSING)),
    )
    registrar = FakeRegistrar(kept)
    source = FakeIntents(
        [exporter("a-9100", 9100), ServiceIntent(service("s-8080", 8080), Source.STATIC)]
    )
    engine = SyncEngine(registrar, source, Health())
    assert not engine.partial_cycle(NO_CHANGE).ran, "no kept state before a full cycle"
    full = engine.cycle()
    assert full.error is None and full.plan is not None
    assert [s.id for s in full.plan.deregister] == ["old-1"], "the full cycle removes it"
    assert registrar.reads == 1

    # A new exporter on 9200, a vanished one on 9100, a static service whose status changed,
    # and c-9300 that the quick pass no longer wants (say, expired) on a port that changed.
    assert engine.known is not None
    engine.known = ActualState(
        NODE,
        (*engine.known.services, service("c-9300", 9300)),
        (*engine.known.checks, check("c-9300", CRITICAL)),
    )
    source.quick = [
        exporter("a-9100", 9100, CRITICAL),
        exporter("b-9200", 9200),
        ServiceIntent(service("s-8080", 8080), Source.STATIC, status=(CRITICAL, "down")),
    ]
    source.ports = frozenset({9100, 9200, 9300, 8080})
    sent_before = len(registrar.sent)
    result = engine.partial_cycle(NO_CHANGE)
    assert result.ran and result.report.error is None
    assert registrar.reads == 1, "no Consul read"
    (sent,) = registrar.sent[sent_before:]
    assert [w.service.id for w in sent.services] == ["b-9200"]
    assert [(w.check.service_id, w.check.status) for w in sent.checks] == [("a-9100", CRITICAL)]
    assert sent.deregister == (), "an incomplete view never deregisters"
    assert engine.known is not None and "c-9300" in {s.id for s in engine.known.services}
    # Nothing changed since: nothing sent.
    assert engine.partial_cycle(NO_CHANGE).report.writes == 0
    assert len(registrar.sent) == sent_before + 1


def test_a_failed_partial_write_forgets_the_kept_state_until_a_full_cycle() -> None:
    registrar = FakeRegistrar(ActualState(NODE, (), ()))
    source = FakeIntents([], quick=[exporter("b-9200", 9200)], ports={9200})
    engine = SyncEngine(registrar, source, Health())
    engine.cycle()
    registrar.failure = RegagentError("refused")
    assert engine.partial_cycle(NO_CHANGE).report.error is not None
    assert engine.known is None and not engine.partial_cycle(NO_CHANGE).ran


# --- the watch's hold-off ---------------------------------------------------------------


class FakeHost:
    """The listeners the watch's sensor reads (node_exporter's default port can matter)."""

    def __init__(self) -> None:
        self.listeners: List[Listener] = []

    def reading(self) -> Listing:
        return Listing.of(self.listeners)

    def sensor(self) -> Sensor:
        return Sensor(Config(), read=self.reading)


class FakeEngine:
    """Writes one check of `svc-9100` whenever asked and not held; remembers what it was told."""

    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self.calls: List[Tuple[FrozenSet[str], FrozenSet[int]]] = []
        self.changes: List[Change] = []
        self.forgot = 0

    def forget_known(self) -> None:
        self.forgot += 1

    def partial_cycle(
        self, change: Change, hold: Sequence[str] = (), also: Sequence[int] = ()
    ) -> PartialReport:
        self.calls.append((frozenset(hold), frozenset(also)))
        self.changes.append(change)
        report = CycleReport()
        result = PartialReport(report, ran=True, ports=frozenset({9100}))
        sid = "svc-9100"
        if sid in hold:
            result.held = {sid: 9100}
            report.plan = Plan(NODE)
            return result
        status = PASSING if self.host.listeners else CRITICAL
        report.plan = plan(
            DesiredState(NODE, (service(sid, 9100),), (check(sid, status),)),
            ActualState(NODE, (service(sid, 9100),), (check(sid, "warning"),)),
        )
        report.desired = DesiredState(NODE, (service(sid, 9100),), ())
        report.writes_by_kind = {"status": 1}
        return result


def test_the_watch_writes_a_flapping_service_at_most_once_per_holdoff() -> None:
    clock, host = FakeClock(), FakeHost()
    engine = FakeEngine(host)
    watch = Watch(engine, host.sensor(), 0.1, clock=clock)  # type: ignore[arg-type]
    writes: List[float] = []
    for step in range(200):  # 20 s of a listener that changes at every look
        clock.now += 0.1
        host.listeners = [Listener("0.0.0.0", 9100, 2, 100 + step)] if step % 2 else []
        result = watch.look()
        if result is not None and result.report.writes:
            writes.append(clock.now)
    assert len(writes) <= 1 + int(20 / FAST_WRITE_HOLDOFF)
    assert all(b - a >= FAST_WRITE_HOLDOFF - 1e-9 for a, b in zip(writes, writes[1:]))
    assert watch.looks == 200 and len(writes) >= 3, "held writes are made when the hold ends"


def test_an_unchanged_listener_set_makes_no_partial_cycle_and_a_stop_ends_the_wait() -> None:
    clock, host = FakeClock(), FakeHost()
    engine = FakeEngine(host)
    watch = Watch(engine, host.sensor(), 0.05, clock=clock)  # type: ignore[arg-type]
    for _ in range(50):
        assert watch.look() is None
    assert engine.calls == [] and watch.looks == 50
    stop = threading.Event()
    stop.set()
    watch.run_for(3600, stop)  # returns at once: the daemon is stopping


def test_the_lean_reader_sees_what_discovery_sees_and_a_new_listener() -> None:
    reader = ListenerReader()
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::", 0))
            sock.listen(1)
            port = sock.getsockname()[1]
            keys = reader().keys
            full = {(item.port, item.inode) for item in listening_sockets()}
            assert full <= keys, "every deduplicated listener is in the lean view"
            assert port in {p for p, _inode in keys}
        assert port not in {p for p, _inode in reader().keys}
    finally:
        reader.close()


def test_watch_interval_is_off_at_zero_and_refused_below_100ms(tmp_path: Path) -> None:
    path = tmp_path / "regagent.yaml"
    path.write_text("discovery: {watch_interval: 0s}\n")
    assert load_config(str(path)).discovery.watch_interval == 0
    path.write_text("discovery: {watch_interval: 50ms}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    assert any("discovery.watch_interval" in p and "100ms" in p for p in raised.value.problems)
    path.write_text("discovery: {watch_interval: 0s}\nconsul: {servers: ['127.0.0.1:1']}\n")
    assert build(load_config(str(path))).watch is None, "0 turns the watch off"


class FakeWait(threading.Event):
    """A stop event whose wait only moves the fake clock (a 10 s test runs in no time)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def wait(self, timeout: Optional[float] = None) -> bool:
        self.clock.now += timeout or 0.0
        return False


def test_a_due_retry_that_cannot_run_does_not_make_the_watch_spin() -> None:
    """A slow starter's retry is due, but no partial cycle can run (Consul could not be read
    at the last full cycle): the watch must look once an interval, not 20 times a second."""
    clock = FakeClock()

    class DueSensor(Sensor):
        def next_look(self) -> Optional[float]:
            return clock.now - 1.0  # always past due: nothing consumes it

    class StuckEngine(FakeEngine):
        def partial_cycle(
            self, change: Change, hold: Sequence[str] = (), also: Sequence[int] = ()
        ) -> PartialReport:
            self.calls.append((frozenset(hold), frozenset(also)))
            return PartialReport(CycleReport(), ran=False, ports=frozenset())

    host = FakeHost()
    sensor = DueSensor(Config(), read=host.reading)
    watch = Watch(StuckEngine(host), sensor, 1.0, clock=clock)  # type: ignore[arg-type]
    watch.run_for(10.0, FakeWait(clock))
    assert 5 <= watch.looks <= 11  # about one look a second, not one every 50 ms


def test_the_watchs_writes_reach_the_metrics() -> None:
    from regagent.metrics import Metrics

    clock, host = FakeClock(), FakeHost()
    metrics = Metrics()
    watch = Watch(
        FakeEngine(host),  # type: ignore[arg-type]
        host.sensor(),
        0.1,
        clock=clock,
        on_report=metrics.observe_writes,
    )
    clock.now += 0.1
    host.listeners = [Listener("0.0.0.0", 9100, 2, 7)]
    result = watch.look()
    assert result is not None and result.report.writes == 1
    value = metrics.registry.get_sample_value("regagent_consul_writes_total", {"kind": "status"})
    assert value == 1.0


def test_a_crashing_partial_cycle_costs_the_fast_path_not_the_daemon() -> None:
    """A bug in a pass is logged once, and no partial cycle runs on the kept state until a
    full cycle has read Consul again (the engine is told to forget it)."""
    clock, host = FakeClock(), FakeHost()

    class CrashingEngine(FakeEngine):
        def partial_cycle(
            self, change: Change, hold: Sequence[str] = (), also: Sequence[int] = ()
        ) -> PartialReport:
            self.changes.append(change)
            raise ValueError("a bug")

    engine = CrashingEngine(host)
    watch = Watch(engine, host.sensor(), 0.1, clock=clock)  # type: ignore[arg-type]
    with capture_logs() as logs:
        for inode in (7, 8):
            clock.now += 0.1
            host.listeners = [Listener("0.0.0.0", 9100, 2, inode)]
            assert watch.look() is None
    assert engine.forgot == 2 and [c.ports for c in engine.changes] == [{9100}, {9100}]
    assert [e["event"] for e in logs] == ["watch_pass_crashed"]
