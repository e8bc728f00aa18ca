"""The node deleted between a cycle's read and its write (a snapshot restore, an operator's
`consul catalog deregister`), against the emulator: the cycle's transaction, planned on a node
that was there, is refused with Consul's "Missing node registration"; the cycle reads once more
and writes the node with everything on it, so Consul holds the host again within the cycle and
the cycle reports no failure.

The operator is played for real (a catalog deregistration through another server) at the one
moment that makes the race certain: right after the registrar's read returns."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, List, Optional, Tuple, cast

import structlog

from consulsim import SimCluster
from helpers.catalog_sim import put
from helpers.consul import NODE, OTHER_SERVER, node_checks, node_services, write_config
from helpers.waits import wait_for
from regagent.app import App, build
from regagent.config import load_config
from regagent.consul.catalog import CatalogRegistrar, plan_units
from regagent.consul.node_watch import NodeWatch, Watched
from regagent.consul.registrar import ReadMeta, Registrar
from regagent.consul.txn import TxnSender
from regagent.errors import NodeVanished
from regagent.model import (
    CRITICAL,
    PASSING,
    ActualState,
    NodeCheck,
    ServiceIntent,
    ServiceRegistration,
    Source,
    canonical_service,
)
from regagent.plan import CheckWrite, NodeCheckWrite, Plan

SERVICE = canonical_service(ServiceRegistration("queue-9000", "queue", 9000, "127.0.0.1"))
TXN = "PUT /v1/txn"
REGISTER = "PUT /v1/catalog/register"


class DeletedAfterReading:
    """The registrar, with an operator who deregisters the node right after a read (once)."""

    def __init__(self, real: CatalogRegistrar, cluster: SimCluster) -> None:
        self.real = real
        self.cluster = cluster
        self.deleted = False
        self.reads = 0

    def read(self) -> Tuple[ActualState, ReadMeta]:
        answer = self.real.read()
        self.reads += 1
        if not self.deleted:
            self.deleted = True
            watch = self.real.watch
            if isinstance(watch, LaggingWatch):
                watch.lag()
            put(self.cluster, "/v1/catalog/deregister", {"Node": NODE}, server=OTHER_SERVER)
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class LaggingWatch(NodeWatch):
    """The real blocking query, except that from `lag()` on it offers the answer it held then
    as fresh: its server's answer about the deletion is still on the way."""

    held: Optional[Watched] = None

    def lag(self) -> None:
        self.held = self.answer

    def fresh(self) -> Optional[Watched]:
        return self.held if self.held is not None else super().fresh()


def app_on(cluster: SimCluster, tmp_path: Path, intents: List[ServiceIntent]) -> App:
    """The app `regagent sync` builds, with `intents` (a list the test changes) as its only
    intents."""
    config = load_config(str(write_config(tmp_path, cluster, [])))
    return build(config, intent_source=lambda *_: list(intents))


def txn_count(cluster: SimCluster) -> int:
    return int(cluster.stats()["endpoints"].get(TXN, 0))


def registered_with(cluster: SimCluster, status: str) -> bool:
    services = node_services(cluster)
    checks = node_checks(cluster)
    check = checks.get(f"service:{SERVICE.id}")
    return SERVICE.id in services and check is not None and check["Status"] == status


def cycle_with_the_node_deleted_after_its_read(
    cluster: SimCluster, tmp_path: Path, watch: bool
) -> None:
    intents = [ServiceIntent(SERVICE, Source.STATIC, status=(PASSING, "up"))]
    app = app_on(cluster, tmp_path, intents)
    real = cast(CatalogRegistrar, app.engine.registrar)
    lagging: Optional[LaggingWatch] = None
    if watch:
        lagging = LaggingWatch(app.pool, NODE, 2.0)
        real.watch = lagging
        lagging.start()
    try:
        assert app.engine.cycle().error is None
        assert registered_with(cluster, PASSING)
        if lagging is not None:
            wait_for("the watch holding a fresh answer", lambda: lagging.fresh() is not None)
        # The exporter went down: the next plan is one check write, no node, no service.
        intents[0] = ServiceIntent(SERVICE, Source.STATIC, status=(CRITICAL, "down"))
        operator = DeletedAfterReading(real, cluster)
        app.engine.registrar = cast(Registrar, operator)
        sent = txn_count(cluster)
        with structlog.testing.capture_logs() as logs:
            report = app.engine.cycle()
    finally:
        if lagging is not None:
            lagging.stop()
    assert report.error is None, report.error
    assert operator.deleted and operator.reads == 2
    assert registered_with(cluster, CRITICAL)
    node = cluster.get(OTHER_SERVER, f"/v1/catalog/node/{NODE}")
    assert node["Node"]["Meta"]["managed-by"] == "regagent" and node["Node"]["Meta"]["rack"] == "r1"
    assert txn_count(cluster) == sent + 2  # the refused check write, then node and all
    # The refused transaction wrote nothing: one request carried the writes.
    assert report.requests == 1 and report.writes_by_kind == {"register": 1}
    events = [e["event"] for e in logs]
    assert "consul_node_vanished" in events and "cycle_reads_again" in events
    assert "consul_write_refused" not in events
    # Steady again: the next cycle, on what it wrote, writes nothing.
    app.engine.registrar = real
    after = app.engine.cycle()
    assert after.error is None and after.writes == 0


def test_a_node_deleted_between_the_read_and_the_write_is_written_again_in_the_same_cycle(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    cycle_with_the_node_deleted_after_its_read(consul_cluster, tmp_path, watch=False)


def test_the_second_read_asks_consul_even_while_the_node_watch_offers_an_older_answer(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    cycle_with_the_node_deleted_after_its_read(consul_cluster, tmp_path, watch=True)


def test_a_node_check_sent_alone_is_not_sent_once_the_node_is_known_gone(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """A node check with a Definition needs its own catalog register, which carries the node:
    sent after the refusal, it would bring the node back with nothing else on it."""
    intents = [ServiceIntent(SERVICE, Source.STATIC, status=(PASSING, "up"))]
    app = app_on(consul_cluster, tmp_path, intents)
    first = app.engine.cycle()
    assert first.error is None and first.desired is not None
    put(consul_cluster, "/v1/catalog/deregister", {"Node": NODE}, server=OTHER_SERVER)
    [check] = first.desired.checks
    alone = NodeCheck("regagent:test", "needs its own request", PASSING, definition={"A": "b"})
    plan = Plan(
        node=first.desired.node,
        checks=(CheckWrite(replace(check, status=CRITICAL), check, SERVICE.name),),
        node_checks=(NodeCheckWrite(alone),),
    )
    units = plan_units(plan, None)
    assert [bool(u.ops) for u in units] == [True, False]  # one txn op, one single write
    registers = int(consul_cluster.stats()["endpoints"].get(REGISTER, 0))
    outcome = TxnSender(app.pool, None).send(units)
    assert isinstance(outcome.error, NodeVanished), outcome.error
    assert int(consul_cluster.stats()["endpoints"].get(REGISTER, 0)) == registers
    assert consul_cluster.get(OTHER_SERVER, f"/v1/catalog/node/{NODE}") is None
