"""Catalog writes as /v1/txn against the emulator: one write for a 20-service host, batches of at
most 64 ops, canonical bodies, a 409 that names the op and its service, and single catalog writes
on a cluster without /v1/txn, decided once per process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import pytest
from structlog.testing import capture_logs

from consulsim import SimCluster
from helpers.consul import NODE, node_services, regagent, static, write_config
from regagent.app import App, GivenIntents, build
from regagent.config import load_config
from regagent.consul.catalog import plan_units
from regagent.consul.txn import TXN_MAX_OPS, batches
from regagent.errors import ConsulRefused
from regagent.metrics import cycle_result
from regagent.model import NodeRegistration, ServiceIntent, ServiceRegistration
from regagent.plan import Plan, ServiceWrite

TXN = "PUT /v1/txn"
REGISTER = "PUT /v1/catalog/register"


def services(n: int, prefix: str = "svc") -> List[ServiceRegistration]:
    return [
        ServiceRegistration(f"{prefix}{i}-{9000 + i}", f"{prefix}{i}", 9000 + i, "127.0.0.1")
        for i in range(n)
    ]


def app_for(
    cluster: SimCluster, tmp_path: Path, wanted: List[ServiceRegistration], **consul: Any
) -> App:
    path = write_config(tmp_path, cluster, [], consul=consul)
    intents = [ServiceIntent(s, "static") for s in wanted]
    return build(load_config(str(path)), intent_source=lambda *_: intents)


def endpoints(cluster: SimCluster) -> Any:
    return cluster.stats()["endpoints"]


def test_a_20_service_host_registers_in_one_transaction_then_writes_nothing(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    app = app_for(consul_cluster, tmp_path, services(20))
    consul_cluster.reset_stats()
    first = app.engine.cycle()
    assert first.error is None, first.error
    assert first.writes == 20
    assert first.requests == 1  # what the report (and so the sync output) says it took
    stats = consul_cluster.stats()
    assert stats["endpoints"].get(TXN) == 1 and REGISTER not in stats["endpoints"]
    assert stats["writes_applied"] == 1
    assert stats["txn"]["ops"] == 41  # the node, then each service with its check
    assert len(node_services(consul_cluster)) == 20

    consul_cluster.reset_stats()
    for _ in range(3):
        later = app.engine.cycle()
        assert later.error is None and later.plan is not None and later.plan.empty
    stats = consul_cluster.stats()
    assert stats["writes_applied"] == 0 and stats["requests"] == 6  # two reads per cycle


def test_a_fresh_process_with_nothing_changed_writes_nothing(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    assert app_for(consul_cluster, tmp_path, services(20)).engine.cycle().error is None
    consul_cluster.reset_stats()
    restarted = app_for(consul_cluster, tmp_path, services(20))
    assert restarted.engine.cycle().plan.empty  # type: ignore[union-attr]
    assert consul_cluster.stats()["writes_applied"] == 0


def test_sync_output_counts_writes_and_the_requests_that_carried_them(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, consul_cluster, [static(f"app{i}", 9000 + i) for i in range(5)])
    first = regagent(config, "sync")
    assert first.returncode == 0, first.stderr
    assert "5 to register; 5 write(s) in 1 request(s)" in first.stdout
    again = json.loads(regagent(config, "sync", "--format", "json").stdout)
    assert (again["writes"], again["requests"]) == (0, 0)


def test_a_large_host_is_split_into_transactions_of_at_most_64_ops(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    consul_cluster.set_txn_max_ops(64)  # Consul 1.4 to 1.13
    app = app_for(consul_cluster, tmp_path, services(70))
    consul_cluster.reset_stats()
    report = app.engine.cycle()
    assert report.error is None, report.error
    stats = consul_cluster.stats()
    assert stats["endpoints"][TXN] == 3  # 141 ops: 1 + 2 x 70
    assert stats["txn"]["ops"] == 141 and stats["txn"]["conflicts"] == 0
    assert len(node_services(consul_cluster)) == 70


def test_transactions_are_canonical_and_keep_a_service_with_its_check() -> None:
    node = NodeRegistration(NODE, "10.0.0.1", {"managed-by": "regagent", "b": "2", "a": "1"})
    from regagent.model import CheckState

    writes = tuple(
        ServiceWrite(s, CheckState(f"service:{s.id}", s.id, f"{s.name} health", "passing"))
        for s in services(40)
    )
    plan = Plan(node=node, node_write=(), services=writes)
    first = batches(plan_units(plan, "dc1"))
    again = batches(plan_units(plan, "dc1"))
    assert [t.body for t in first] == [t.body for t in again]
    assert [len(t.ops) for t in first] == [63, 18]  # a service never leaves its check behind
    assert all(len(t.ops) <= TXN_MAX_OPS for t in first)
    ops = json.loads(first[0].body)
    assert ops[0] == {
        "Node": {
            "Verb": "set",
            "Node": {
                "Node": NODE,
                "Address": "10.0.0.1",
                "Datacenter": "dc1",
                "Meta": {"a": "1", "b": "2", "managed-by": "regagent"},
            },
        }
    }
    service, check = ops[1]["Service"], ops[2]["Check"]
    assert service["Service"]["Meta"] == {} and service["Service"]["Tags"] == []
    assert check["Check"]["ServiceName"] == "svc0" and check["Check"]["Status"] == "passing"
    assert "Definition" not in check["Check"]


def test_a_renamed_service_is_deleted_and_recreated_not_renamed_under_its_id() -> None:
    node = NodeRegistration(NODE, "10.0.0.1", {})
    old = ServiceRegistration("web-80", "web", 80)
    new = ServiceRegistration("web-80", "www", 80)
    plan = Plan(node=node, services=(ServiceWrite(new, None, old, (("name", "web", "www"),)),))
    ops = batches(plan_units(plan, None))[0].ops
    assert [(next(iter(op)), op[next(iter(op))]["Verb"]) for op in ops] == [
        ("Service", "delete"),
        ("Service", "set"),
    ]
    assert ops[0]["Service"]["Service"] == {"ID": "web-80", "Service": "web"}


def test_a_409_names_the_failing_op_and_its_service_and_the_rest_is_written(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    only_a = {
        "AccessorID": "5d0c6b3e-0000-4000-8000-000000000003",
        "node_prefix": {"": "write"},
        "service_prefix": {"a": "write"},
    }
    consul_cluster.set_acl({"default_policy": "deny", "tokens": {"tok": only_a}})
    wanted = [ServiceRegistration("a-1", "a", 1), ServiceRegistration("b-2", "b", 2)]
    app = app_for(consul_cluster, tmp_path, wanted, token="tok")
    consul_cluster.reset_stats()
    report = app.engine.cycle()
    assert report.error is not None
    text = str(report.error)
    assert "(409)" in text and "op 3 (service b-2)" in text and "lacks permission" in text
    assert report.writes == 1  # a-1
    assert set(node_services(consul_cluster, token="tok")) == {"a-1"}
    assert consul_cluster.stats()["endpoints"][TXN] == 2  # the refused one, then the rest


@pytest.mark.parametrize("txn", [True, False])
def test_several_refused_writes_are_reported_as_a_refusal(
    consul_cluster: SimCluster, tmp_path: Path, txn: bool
) -> None:
    """Two transactions (70 services) each with one service the token may not write, or three
    single writes of which two are refused: one error, a refusal like its parts, so metrics
    count the cycle as `refused` and not as a generic `error`."""
    some_denied = {
        "AccessorID": "5d0c6b3e-0000-4000-8000-000000000004",
        "node_prefix": {"": "write"},
        "service_prefix": {"": "write"},
        "service": {"svc3": "deny", "svc40": "deny"} if txn else {"b": "deny", "c": "deny"},
    }
    consul_cluster.set_acl({"default_policy": "deny", "tokens": {"tok": some_denied}})
    consul_cluster.set_txn(txn)
    wanted = services(70) if txn else [ServiceRegistration(f"{n}-1", n, 1) for n in "abc"]
    report = app_for(consul_cluster, tmp_path, wanted, token="tok").engine.cycle()
    assert isinstance(report.error, ConsulRefused), repr(report.error)
    text = str(report.error)
    assert text.startswith("2 writes failed; first:" if txn else "2 of 3 writes failed; first:")
    assert "service svc3-9003" in text if txn else 'on "b"' in text
    assert report.writes == len(wanted) - 2
    assert cycle_result(report) == "refused"
    assert report.error.exit_code == ConsulRefused.exit_code


@pytest.mark.parametrize("status", [404, 405, 403])
def test_a_cluster_without_txn_gets_single_writes_decided_once_and_logged_once(
    consul_cluster: SimCluster, tmp_path: Path, status: int
) -> None:
    consul_cluster.set_txn(False, status=status)
    app = app_for(consul_cluster, tmp_path, services(3))
    consul_cluster.reset_stats()
    with capture_logs() as logs:
        first = app.engine.cycle()
        assert first.error is None, first.error
        assert first.writes == 3
        # A change later in the same process: straight to single writes.
        app.engine.source = GivenIntents(
            lambda *_: [ServiceIntent(s, "static") for s in services(4)]
        )
        second = app.engine.cycle()
        assert second.error is None and second.writes == 1
    assert [e["event"] for e in logs].count("consul_txn_unavailable") == 1
    counts = endpoints(consul_cluster)
    assert counts[TXN] == 1  # asked once per process
    assert counts[REGISTER] == 4
    assert len(node_services(consul_cluster)) == 4


def test_an_acl_403_is_a_refusal_not_a_missing_txn(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    consul_cluster.set_acl({"default_policy": "deny", "tokens": {}})
    app = app_for(consul_cluster, tmp_path, services(1), token="unknown-token")
    report = app.engine.cycle()
    assert report.error is not None
    assert app.pool.capabilities.get("txn", True)  # still believed served


def test_a_no_txn_emulator_from_the_start(tmp_path: Path) -> None:
    with SimCluster(servers=3, election_delay="0.2s", rpc_hold="0.5s", txn=False) as cluster:
        cluster.wait_for_leader()
        app = app_for(cluster, tmp_path, services(2))
        cluster.reset_stats()
        assert app.engine.cycle().error is None
        assert endpoints(cluster)[TXN] == 1 and endpoints(cluster)[REGISTER] == 2
        stats: Optional[Any] = cluster.stats()["txn"]
        assert stats is not None and stats["write"] == 0


def test_a_service_stored_with_null_tags_is_no_change(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """regagent always sends Tags as a list and Meta as a dict; a service another writer stored
    with nil Tags (a txn without Tags) reads back as null or [] and still plans nothing."""
    import requests

    wanted = [ServiceRegistration("untagged-1", "untagged", 1, "127.0.0.1")]
    app = app_for(consul_cluster, tmp_path, wanted)
    assert app.engine.cycle().error is None
    stored = node_services(consul_cluster)["untagged-1"]
    service = {k: stored[k] for k in ("ID", "Service", "Address", "Port", "Meta")}  # no Tags
    op = {"Service": {"Verb": "set", "Node": NODE, "Service": service}}
    leader = consul_cluster.wait_for_leader()
    assert requests.put(consul_cluster.url(leader) + "/v1/txn", json=[op], timeout=10).ok
    consul_cluster.reset_stats()
    again = app.engine.cycle()
    assert again.error is None and again.plan is not None and again.plan.empty
    assert consul_cluster.stats()["writes_applied"] == 0
