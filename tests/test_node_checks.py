"""Node-level checks regagent owns: declared by a feature, diffed like service checks, written
through both catalog write paths, shown by a dry run, and never a node check regagent does not
own (a real agent's serfHealth, a check another tool wrote)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consulsim import SimCluster
from helpers.catalog_sim import (
    NODE,
    DeclaredNodeChecks,
    node_checks,
    put,
    service_health,
    write_config,
)
from regagent.app import App, build
from regagent.config import load_config
from regagent.consul.catalog import CatalogRegistrar, plan_units
from regagent.desired import desired_state
from regagent.model import (
    ActualState,
    NodeCheck,
    NodeRegistration,
    ServiceIntent,
    ServiceRegistration,
    Source,
)
from regagent.nodechecks import NodeCheckClaim, merged
from regagent.plan import plan
from regagent.render.sync import cycle_json, cycle_text

MAINT = NodeCheck("regagent:test-maint", "Test maintenance", "critical", notes="kernel update")
SESSION = NodeCheck(
    "regagent:test-alive",
    "Test alive",
    "critical",
    output="dead if this host stops renewing",
    type="session",
    definition={"SessionName": "regagent:x"},
    consul_owns_status=True,
)
HOST = NodeRegistration(NODE, "127.0.0.1", {"managed-by": "regagent"})
SERVICE = ServiceRegistration("web-80", "web", 80, "127.0.0.1")


def wanted(*checks: NodeCheck, owned: Any = ()) -> Any:
    return desired_state(
        HOST,
        [ServiceIntent(SERVICE, Source.STATIC)],
        {},
        node_checks=checks,
        owned_node_checks=frozenset(owned),
    )


def held(*checks: NodeCheck) -> ActualState:
    base = wanted()
    return ActualState(
        HOST,
        base.services,
        base.checks,
        tuple(c.check_id for c in checks),
        tuple(checks),
    )


# ---------------------------------------------------------------------------- the planner


def test_a_missing_node_check_is_written_and_an_equal_one_is_not() -> None:
    (write,) = plan(wanted(MAINT), held()).node_checks
    assert write.is_new and write.check == MAINT
    assert plan(wanted(MAINT), held(MAINT)).empty


def test_a_changed_node_check_is_rewritten_with_its_diff() -> None:
    old = NodeCheck(MAINT.check_id, MAINT.name, "critical", notes="old reason")
    (write,) = plan(wanted(MAINT), held(old)).node_checks
    assert write.diff == (("notes", "old reason", "kernel update"),)


def test_a_status_consul_owns_is_never_written_back() -> None:
    flipped = NodeCheck(**{**SESSION.__dict__, "status": "passing"})
    assert plan(wanted(SESSION), held(flipped)).empty
    moved = NodeCheck(**{**flipped.__dict__, "definition": {"SessionName": "regagent:y"}})
    (write,) = plan(wanted(SESSION), held(moved)).node_checks
    assert write.diff == (
        ("definition", {"SessionName": "regagent:y"}, {"SessionName": "regagent:x"}),
    )


def test_only_owned_node_checks_are_removed() -> None:
    serf = NodeCheck("serfHealth", "Serf Health Status", "passing")
    other = NodeCheck("esm-probe", "another tool's", "passing")
    result = plan(wanted(owned={MAINT.check_id}), held(MAINT, serf, other))
    assert result.node_checks_removed == (MAINT,)
    assert plan(wanted(), held(MAINT, serf, other)).empty  # nobody claims it: left alone


def test_serf_health_is_never_claimed_and_claims_do_not_overlap() -> None:
    claim = merged([NodeCheckClaim(frozenset({"serfHealth", "a"}))])
    assert claim.owned == frozenset({"a"})
    with pytest.raises(ValueError):
        merged([NodeCheckClaim(frozenset({"a"})), NodeCheckClaim(frozenset({"a"}))])
    with pytest.raises(ValueError):
        NodeCheckClaim(frozenset(), (MAINT,))


def test_requests_are_canonical_and_a_typed_check_is_a_single_catalog_register() -> None:
    result = plan(wanted(MAINT, SESSION), held())
    units = plan_units(result, None)
    assert units == plan_units(plan(wanted(MAINT, SESSION), held()), None)  # byte-identical
    by_what = {u.what: u for u in units}
    maint = by_what[f"node check {MAINT.check_id}"]
    assert maint.ops == (
        {
            "Check": {
                "Verb": "set",
                "Check": {
                    "Node": NODE,
                    "CheckID": MAINT.check_id,
                    "Name": MAINT.name,
                    "Status": "critical",
                    "Output": "",
                    "Notes": "kernel update",
                },
            }
        },
    )
    session = by_what[f"node check {SESSION.check_id}"]
    assert session.ops == ()  # a transaction would drop Definition.SessionName
    assert session.single.path == "/v1/catalog/register"
    assert session.single.body["Check"] == {
        "CheckID": SESSION.check_id,
        "Name": SESSION.name,
        "Status": "critical",
        "Output": SESSION.output,
        "Notes": "",
        "Type": "session",
        "Definition": {"SessionName": "regagent:x"},
    }
    assert "ServiceID" not in session.single.body["Check"]


# ------------------------------------------------------------------ against the emulator


def app_with(cluster: SimCluster, tmp_path: Path, source: DeclaredNodeChecks, **consul: Any) -> App:
    path = write_config(tmp_path, cluster, [], consul=consul)
    intents = [ServiceIntent(SERVICE, Source.STATIC)]
    app = build(load_config(str(path)), intent_source=lambda *_: intents)
    assert isinstance(app.registrar, CatalogRegistrar)
    app.registrar.node_check_sources = (source,)
    return app


def cycle_ok(app: App) -> Any:
    report = app.engine.cycle()
    assert report.error is None, report.error
    return report


@pytest.mark.parametrize("txn", [True, False], ids=["txn", "single-writes"])
def test_an_owned_node_check_is_written_kept_and_removed_through_both_write_paths(
    consul_cluster: SimCluster, tmp_path: Path, txn: bool
) -> None:
    consul_cluster.set_txn(txn)
    source = DeclaredNodeChecks(wanted=[MAINT])
    app = app_with(consul_cluster, tmp_path, source)
    cycle_ok(app)
    check = node_checks(consul_cluster)[MAINT.check_id]
    assert (check["Status"], check["Notes"], check["ServiceID"]) == (
        "critical",
        "kernel update",
        "",
    )
    # A critical node check takes every service of the node out of ?passing.
    assert service_health(consul_cluster, "web", passing=True) == []
    assert len(service_health(consul_cluster, "web")) == 1

    consul_cluster.reset_stats()
    assert cycle_ok(app).plan.empty
    assert consul_cluster.stats()["writes_applied"] == 0

    source.wanted = ()  # still owned, no longer wanted: removed
    assert cycle_ok(app).writes == 1
    assert MAINT.check_id not in node_checks(consul_cluster)
    assert len(service_health(consul_cluster, "web", passing=True)) == 1


def test_node_checks_others_wrote_are_never_touched(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    app = app_with(consul_cluster, tmp_path, DeclaredNodeChecks(owned={MAINT.check_id}))
    cycle_ok(app)
    foreign = {"CheckID": "other-tool", "Name": "someone else's", "Status": "warning"}
    put(
        consul_cluster,
        "/v1/catalog/register",
        {"Node": NODE, "Address": "127.0.0.1", "SkipNodeUpdate": True, "Check": foreign},
    )
    for _ in range(2):
        assert cycle_ok(app).plan.empty
    assert node_checks(consul_cluster)["other-tool"]["Status"] == "warning"
    # Deregistering keeps a node that carries someone else's check, and that check.
    removed = app.engine.deregister_owned()
    assert removed == [SERVICE.id]
    assert set(node_checks(consul_cluster)) == {"other-tool"}


def test_deregister_removes_owned_node_checks_and_then_the_node(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    app = app_with(consul_cluster, tmp_path, DeclaredNodeChecks(wanted=[MAINT]))
    cycle_ok(app)
    assert app.engine.deregister_owned() == [SERVICE.id, f"node {NODE}"]
    assert consul_cluster.catalog_node_services(NODE) is None


def test_a_session_check_is_written_whole_by_catalog_register_even_with_txn(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    app = app_with(consul_cluster, tmp_path, DeclaredNodeChecks(wanted=[SESSION]))
    consul_cluster.reset_stats()
    report = cycle_ok(app)
    endpoints = consul_cluster.stats()["endpoints"]
    assert endpoints.get("PUT /v1/txn") == 1 and endpoints.get("PUT /v1/catalog/register") == 1
    assert report.writes == 2 and report.requests == 2
    check = node_checks(consul_cluster)[SESSION.check_id]
    assert (check["Type"], check["Definition"].get("SessionName")) == ("session", "regagent:x")
    # Consul owns the status of this check: whatever it becomes, regagent does not write it.
    put(
        consul_cluster,
        "/v1/catalog/register",
        {
            "Node": NODE,
            "Address": "127.0.0.1",
            "SkipNodeUpdate": True,
            "Check": {**check, "Status": "passing"},
        },
    )
    consul_cluster.reset_stats()
    assert cycle_ok(app).plan.empty
    assert consul_cluster.stats()["writes_applied"] == 0


def test_dry_run_shows_node_checks_and_writes_nothing(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    app = app_with(consul_cluster, tmp_path, DeclaredNodeChecks(wanted=[MAINT, SESSION]))
    consul_cluster.reset_stats()
    report = app.engine.cycle(dry_run=True)
    assert consul_cluster.stats()["writes_applied"] == 0
    text = "\n".join(cycle_text(report, True))
    assert f"+ node check {MAINT.check_id}: 'Test maintenance' [critical]" in text
    assert (
        f"+ node check {SESSION.check_id}: 'Test alive' type=session "
        "{SessionName=regagent:x} [critical, then Consul's]" in text
    )
    assert "2 node check(s) to write" in text
    doc = json.loads(json.dumps(cycle_json(report, True)))
    actions = [(c["action"], c.get("check_id")) for c in doc["changes"]]
    assert ("node_check", MAINT.check_id) in actions and ("node_check", SESSION.check_id) in actions
    assert [c["status_by"] for c in doc["node_checks"]] == ["consul", "regagent"]
