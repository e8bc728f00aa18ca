"""The sync engine's policies on a fake registrar and a fake clock: what stops a cycle before it
writes (no leader, the cycle deadline, a node regagent does not own), what a dry run leaves
alone, and where health checks run."""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Optional

from helpers.fakes import NO_CHANGE, NODE, FakeClock, FakeIntents, FakeRegistrar
from regagent.consul.retry import CYCLE_DEADLINE
from regagent.engine import SyncEngine
from regagent.errors import CycleDeadline, NoClusterLeader, NodeOwnedByOther
from regagent.health import Health
from regagent.model import (
    CRITICAL,
    PASSING,
    ActualState,
    HealthProbe,
    Result,
    ServiceIntent,
    ServiceRegistration,
    Source,
    canonical_service,
)

EMPTY = ActualState(None, (), ())


def static(sid: str, port: int) -> ServiceIntent:
    service = canonical_service(ServiceRegistration(sid, sid.rsplit("-", 1)[0], port, NODE.address))
    return ServiceIntent(service, Source.STATIC)


def engine_for(
    registrar: FakeRegistrar,
    intents: FakeIntents,
    clock: Optional[FakeClock] = None,
    cycle_deadline: float = CYCLE_DEADLINE,
) -> SyncEngine:
    return SyncEngine(
        registrar, intents, Health(), clock=clock or FakeClock(), cycle_deadline=cycle_deadline
    )


def test_without_a_cluster_leader_writes_are_postponed_and_no_state_is_kept() -> None:
    registrar = FakeRegistrar(EMPTY, known_leader=False)
    engine = engine_for(registrar, FakeIntents([static("app-80", 80), static("db-5432", 5432)]))
    report = engine.cycle()
    assert isinstance(report.error, NoClusterLeader)
    assert "2 write(s) postponed to the next cycle" in str(report.error)
    assert report.plan is not None and len(report.plan.services) == 2, "planned, not sent"
    assert registrar.sent == [] and report.writes == 0
    assert engine.known is None and not engine.partial_cycle(NO_CHANGE).ran
    registrar.known_leader = True  # the cluster elected one: the next cycle writes
    again = engine.cycle()
    assert again.error is None and again.writes == 2 and len(registrar.sent) == 1
    # In sync without a leader: nothing to postpone, but no partial cycle on that view.
    registrar.known_leader = False
    quiet = engine.cycle()
    assert quiet.error is None and quiet.plan is not None and quiet.plan.empty
    assert len(registrar.sent) == 1 and not engine.partial_cycle(NO_CHANGE).ran


def test_a_cycle_past_its_deadline_writes_nothing() -> None:
    clock = FakeClock()
    registrar = FakeRegistrar(EMPTY)
    intents = FakeIntents([static("app-80", 80)], clock)
    engine = engine_for(registrar, intents, clock, cycle_deadline=10.0)
    intents.delay = 10.5  # discovery was slow: the cycle is past its deadline before writing
    report = engine.cycle()
    assert isinstance(report.error, CycleDeadline)
    assert "over 10s before writing; 1 write(s) postponed" in str(report.error)
    assert registrar.sent == [] and engine.known is None
    intents.delay = 9.5  # within the deadline: written
    on_time = engine.cycle()
    assert on_time.error is None and on_time.writes == 1 and len(registrar.sent) == 1


def test_a_node_regagent_does_not_own_is_never_written() -> None:
    foreign = ActualState(NODE, (), ())
    refusal = NodeOwnedByOther("node 'host' already exists in Consul without NodeMeta")
    registrar = FakeRegistrar(foreign, refusal=refusal)
    engine = engine_for(registrar, FakeIntents([static("app-80", 80)]))
    for dry_run in (True, False):
        report = engine.cycle(dry_run=dry_run)
        assert report.error is refusal
        assert report.plan is None and report.desired is not None, "shown, not planned"
    assert registrar.sent == [] and registrar.housekeeping == 0
    assert engine.known is None and not engine.partial_cycle(NO_CHANGE).ran


def test_a_dry_run_persists_nothing() -> None:
    registrar = FakeRegistrar(EMPTY)
    intents = FakeIntents([static("app-80", 80)])
    engine = engine_for(registrar, intents)
    report = engine.cycle(dry_run=True)
    assert report.error is None and report.dry_run
    assert report.plan is not None and [w.service.id for w in report.plan.services] == ["app-80"]
    assert intents.persist == [False], "the intent source is told not to save its state"
    assert registrar.sent == [] and registrar.housekeeping == 0, "nothing sent to Consul"
    assert engine.known is None, "no kept state from a dry run"
    # A dry run after a real cycle leaves the real cycle's kept state as it was.
    assert engine.cycle().writes == 1
    kept = engine.known
    intents.wanted.append(static("db-5432", 5432))
    assert engine.cycle(dry_run=True).plan is not None
    assert engine.known is kept and intents.persist == [False, True, False]
    assert len(registrar.sent) == 1


def test_a_full_cycle_in_sync_writes_nothing_and_does_the_backends_housekeeping() -> None:
    registrar = FakeRegistrar(EMPTY)
    engine = engine_for(registrar, FakeIntents([static("app-80", 80)]))
    assert engine.cycle().writes == 1 and registrar.housekeeping == 0
    report = engine.cycle()
    assert report.error is None and report.plan is not None and report.plan.in_sync
    assert len(registrar.sent) == 1 and registrar.housekeeping == 1
    assert report.server == "fake" and engine.known is not None


def test_a_partial_cycle_writes_the_discovered_services_status_without_a_read() -> None:
    registrar = FakeRegistrar(EMPTY)
    exporter = canonical_service(ServiceRegistration("node-9100", "node", 9100, NODE.address))
    found = ServiceIntent(exporter, Source.DISCOVERY, status=(PASSING, "ok"))
    engine = SyncEngine(
        registrar, FakeIntents([], quick=[found], ports={9100}), Health(), clock=FakeClock()
    )
    assert engine.cycle().error is None and registrar.reads == 1
    result = engine.partial_cycle(NO_CHANGE)
    assert result.ran and result.report.error is None and result.report.writes == 1
    assert registrar.reads == 1 and [w.service.id for w in registrar.sent[-1].services] == [
        "node-9100"
    ]


class Probes:
    """A probe runner that answers from a script and records what it was asked."""

    def __init__(self) -> None:
        self.result: Result = (PASSING, "ok")
        self.asked: List[List[HealthProbe]] = []

    def __call__(self, probes: List[HealthProbe]) -> Dict[HealthProbe, Result]:
        self.asked.append(list(probes))
        return dict.fromkeys(probes, self.result)


def checked(sid: str, port: int) -> ServiceIntent:
    probe = HealthProbe("tcp", f"{NODE.address}:{port}")
    return ServiceIntent(static(sid, port).service, Source.STATIC, probe=probe)


def test_the_engine_runs_the_checks_only_where_consul_does_not() -> None:
    for runs_checks in (True, False):
        probes = Probes()
        registrar = FakeRegistrar(EMPTY, runs_checks=runs_checks)
        engine = SyncEngine(registrar, FakeIntents([checked("app-80", 80)]), Health(3, probes))
        report = engine.cycle()
        assert report.error is None and report.desired is not None
        if runs_checks:
            assert [len(asked) for asked in probes.asked] == [1]
            assert [c.status for c in report.desired.checks] == [PASSING]
        else:  # a Consul agent runs it: the engine hands over the definition, runs nothing
            assert probes.asked == [] and report.desired.checks == ()
            assert list(report.desired.probes) == ["app-80"]


def test_a_partial_cycle_runs_no_check_and_keeps_the_flap_history_it_does_not_see() -> None:
    probes = Probes()
    registrar = FakeRegistrar(EMPTY)
    exporter = canonical_service(ServiceRegistration("node-9100", "node", 9100, NODE.address))
    found = ServiceIntent(exporter, Source.DISCOVERY, status=(PASSING, "ok"))
    engine = SyncEngine(
        registrar,
        FakeIntents([checked("app-80", 80), found], quick=[found], ports={9100}),
        Health(3, probes),
    )
    assert engine.cycle().writes == 2
    probes.result = (CRITICAL, "connection refused")
    statuses = []
    for _ in range(3):  # app-80 fails three full cycles in a row, a partial cycle before each
        assert engine.partial_cycle(NO_CHANGE).ran
        report = engine.cycle()
        assert report.desired is not None
        statuses += [c.status for c in report.desired.checks if c.service_id == "app-80"]
    assert statuses == [PASSING, PASSING, CRITICAL], "the partial cycles kept the count"
    assert len(probes.asked) == 4, "probes ran in the full cycles only"


def test_a_full_cycle_forgets_the_flap_history_of_services_no_longer_wanted() -> None:
    probes = Probes()
    registrar = FakeRegistrar(EMPTY)
    intents = FakeIntents([checked("app-80", 80)])
    engine = SyncEngine(registrar, intents, Health(3, probes))
    assert engine.cycle().writes == 1
    intents.wanted = []  # app-80 leaves the configuration: deregistered, history dropped
    assert engine.cycle().writes == 1
    intents.wanted = [checked("app-80", 80)]  # back, failing: no good result to hold
    probes.result = (CRITICAL, "connection refused")
    back = engine.cycle()
    assert back.desired is not None
    assert [c.status for c in back.desired.checks] == [CRITICAL]


def test_a_partial_cycle_asks_about_the_looks_change_until_the_kept_state_is_forgotten() -> None:
    registrar = FakeRegistrar(EMPTY)
    intents = FakeIntents([static("app-80", 80)])
    engine = engine_for(registrar, intents)
    assert engine.cycle().writes == 1
    assert engine.partial_cycle(NO_CHANGE).ran and intents.changes == [NO_CHANGE]
    engine.forget_known()  # the watch's pass broke: wait for a full cycle's read
    assert not engine.partial_cycle(NO_CHANGE).ran and intents.changes == [NO_CHANGE]
    assert engine.cycle().error is None and engine.partial_cycle(NO_CHANGE).ran


def test_a_repair_writes_back_what_regagent_wrote_and_nothing_it_did_not() -> None:
    registrar = FakeRegistrar(EMPTY)
    engine = engine_for(registrar, FakeIntents([static("app-80", 80), static("db-5432", 5432)]))
    assert engine.repair(None, ()) is None, "no kept state yet: the next cycle repairs"
    assert engine.cycle().writes == 2
    known = engine.known
    assert known is not None and known.node is not None
    # regagent's own write, seen back by the watch: nothing to do.
    assert engine.repair(known.node, known.services) is None
    sent = len(registrar.sent)
    # A third party deregistered db-5432 and added a service of its own.
    foreign = ServiceRegistration("other-1", "other", 1, NODE.address)
    app = next(s for s in known.services if s.id == "app-80")
    report = engine.repair(known.node, (app, foreign))
    assert report is not None and report.error is None and report.plan is not None
    assert [w.service.id for w in report.plan.services] == ["db-5432"]
    assert report.plan.services[0].check is not None, "its check went with it: written too"
    assert not report.plan.deregister and report.plan.node_write is None
    assert len(registrar.sent) == sent + 1 and registrar.reads == 1, "no Consul read"
    # The whole node deleted: node and every service, in one plan.
    again = engine.repair(None, ())
    assert again is not None and again.plan is not None
    assert again.plan.node_write == () and len(again.plan.services) == 2
    # Only the node's meta altered (a register without NodeMeta): the node alone is written.
    assert engine.known is not None and engine.known.node is not None
    bare = replace(engine.known.node, meta={})
    alone = engine.repair(bare, engine.known.services)
    assert alone is not None and alone.plan is not None
    assert alone.plan.node_write and not alone.plan.services


def test_a_repair_never_deregisters_and_keeps_no_state_after_a_failed_write() -> None:
    registrar = FakeRegistrar(EMPTY)
    engine = engine_for(registrar, FakeIntents([static("app-80", 80)]))
    engine.cycle()
    known = engine.known
    assert known is not None and known.node is not None
    # A snapshot restore brought back a regagent service removed long ago: left to the cycle.
    old = canonical_service(ServiceRegistration("gone-9", "gone", 9, NODE.address))
    assert engine.repair(known.node, (*known.services, old)) is not None
    assert all(not plan.deregister for plan in registrar.sent)
    registrar.failure = NodeOwnedByOther("refused")
    failed = engine.repair(None, ())
    assert failed is not None and failed.error is not None
    assert engine.known is None and engine.repair(None, ()) is None
