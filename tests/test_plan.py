"""The planner: pure data in, data out."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from regagent.consul.catalog import plan_requests
from regagent.model import (
    CRITICAL,
    PASSING,
    ActualState,
    CheckState,
    DesiredState,
    NodeRegistration,
    ServiceRegistration,
    service_check_id,
)
from regagent.plan import plan

NODE = NodeRegistration("host1", "10.0.0.5", {"external-node": "true", "managed-by": "regagent"})
OWNED = {"managed-by": "regagent"}


def service(
    sid: str,
    port: int = 9100,
    tags: Tuple[str, ...] = ("node",),
    meta: Optional[Dict[str, str]] = None,
) -> ServiceRegistration:
    return ServiceRegistration(
        sid, sid.split("-", maxsplit=1)[0], port, "10.0.0.5", tags, meta or dict(OWNED)
    )


def check(sid: str, status: str = PASSING, output: str = "ok") -> CheckState:
    return CheckState(service_check_id(sid), sid, f"{sid} health", status, output)


def desired(
    *services: ServiceRegistration, statuses: Optional[Dict[str, str]] = None
) -> DesiredState:
    statuses = statuses or {}
    return DesiredState(
        NODE, services, tuple(check(s.id, statuses.get(s.id, PASSING)) for s in services)
    )


def actual_of(state: DesiredState, extra: Tuple[ServiceRegistration, ...] = ()) -> ActualState:
    return ActualState(state.node, state.services + extra, state.checks)


def test_empty_catalog_registers_node_and_every_service() -> None:
    want = desired(service("node-9100"), service("redis-9121", 9121))
    result = plan(want, ActualState(None, (), ()))
    assert result.node_write == ()
    assert [w.service.id for w in result.services] == ["node-9100", "redis-9121"]
    assert all(w.is_new and w.check is not None for w in result.services)
    assert len(plan_requests(result, None)) == 2  # the node rides along with the first service


def test_identical_state_plans_nothing() -> None:
    want = desired(service("node-9100"))
    result = plan(want, actual_of(want))
    assert result.empty
    assert len(plan_requests(result, None)) == 0


def test_changed_tag_is_one_update_with_field_diff() -> None:
    want = desired(service("node-9100", tags=("linux", "node")))
    have = actual_of(desired(service("node-9100", tags=("node",))))
    result = plan(want, have)
    assert len(result.services) == 1
    assert result.services[0].diff == (("tags", ("node",), ("linux", "node")),)
    assert len(plan_requests(result, None)) == 1


def test_status_change_writes_only_the_check() -> None:
    want = desired(service("node-9100"), statuses={"node-9100": CRITICAL})
    result = plan(want, actual_of(desired(service("node-9100"))))
    assert not result.services
    assert [(c.check.status, c.old.status if c.old else None) for c in result.checks] == [
        (CRITICAL, PASSING)
    ]


def test_missing_check_is_written() -> None:
    want = desired(service("node-9100"))
    have = ActualState(NODE, want.services, ())
    result = plan(want, have)
    assert [c.check.check_id for c in result.checks] == ["service:node-9100"]


def test_owned_service_no_longer_desired_is_deregistered() -> None:
    want = desired(service("node-9100"))
    result = plan(want, actual_of(want, extra=(service("redis-9121", 9121),)))
    assert [s.id for s in result.deregister] == ["redis-9121"]


def test_foreign_services_are_never_touched() -> None:
    foreign = ServiceRegistration("web-80", "web", 80, "10.0.0.5", (), {"team": "web"})
    want = desired(service("node-9100"))
    result = plan(want, actual_of(want, extra=(foreign,)))
    assert result.empty


def test_foreign_service_with_wanted_id_is_a_conflict_not_a_write() -> None:
    foreign = ServiceRegistration("node-9100", "node", 9100, "10.0.0.5", (), {})
    want = desired(service("node-9100"))
    result = plan(want, ActualState(NODE, (foreign,), ()))
    assert not result.services and not result.deregister
    assert [c.service_id for c in result.conflicts] == ["node-9100"]


def test_node_address_change_is_a_node_write() -> None:
    want = desired(service("node-9100"))
    moved = NodeRegistration("host1", "10.0.0.9", dict(NODE.meta))
    result = plan(want, ActualState(moved, want.services, want.checks))
    assert result.node_write == (("address", "10.0.0.9", "10.0.0.5"),)
    assert len(plan_requests(result, None)) == 1


def test_tag_order_in_consul_counts_as_a_change() -> None:
    # Consul compares tag lists in order; a reordered list would churn if not rewritten canonically.
    want = desired(service("node-9100", tags=("a", "b")))
    have = actual_of(desired(service("node-9100", tags=("b", "a"))))
    assert len(plan(want, have).services) == 1


def test_service_with_meta_consul_would_refuse_is_skipped_and_its_registration_kept() -> None:
    registered = service("node-9100")
    broken = service("node-9100", meta={**OWNED, "exporter_version": "x" * 600})
    result = plan(desired(broken), actual_of(desired(registered)))
    assert result.empty  # neither updated (Consul would refuse) nor deregistered
    assert [c.service_id for c in result.conflicts] == ["node-9100"]
    assert "longer than 512" in result.conflicts[0].reason


def test_node_change_rides_along_with_a_check_write() -> None:
    from regagent.consul.catalog import plan_requests

    want = desired(service("node-9100"), statuses={"node-9100": CRITICAL})
    moved = NodeRegistration("host1", "10.0.0.9", dict(NODE.meta))
    have = ActualState(moved, want.services, desired(service("node-9100")).checks)
    result = plan(want, have)
    requests = plan_requests(result, None)
    assert len(requests) == 1
    assert requests[0].body["Address"] == "10.0.0.5"
    assert requests[0].body["Check"]["Status"] == CRITICAL


def test_the_plan_carries_what_sending_it_needs() -> None:
    """The requests are a function of the plan alone: a check written alone names its service
    (a transaction's ACL check reads ServiceName), and in agent mode a service write carries
    the check definition the agent runs. No backend has to remember its last desired state."""
    from regagent.consul.agent import agent_requests
    from regagent.consul.catalog import plan_units
    from regagent.desired import desired_state
    from regagent.model import HealthProbe, ServiceIntent, Source

    want = desired(service("node-9100"), statuses={"node-9100": CRITICAL})
    result = plan(want, actual_of(desired(service("node-9100"))))
    assert [c.service_name for c in result.checks] == ["node"]
    (unit,) = plan_units(result, None)
    assert unit.ops[0]["Check"]["Check"]["ServiceName"] == "node"

    probe = HealthProbe("tcp", "10.0.0.5:9100", 2.0)
    intent = ServiceIntent(service("node-9100"), Source.STATIC, probe=probe)
    agent_want = desired_state(NODE, [intent], {}, with_checks=False)
    assert agent_want.checks == () and dict(agent_want.probes) == {"node-9100": probe}
    (write,) = plan(agent_want, ActualState(NODE, (), ())).services
    assert write.probe == probe
    (request,) = agent_requests(plan(agent_want, ActualState(NODE, (), ())), 30.0)
    assert request.body["Check"]["TCP"] == "10.0.0.5:9100"
    assert request.body["Check"]["Interval"] == "30s"


def test_planned_writes_count_what_the_requests_carry_without_building_them() -> None:
    from regagent.consul.catalog import logical_writes

    moved = NodeRegistration("host1", "10.0.0.9", dict(NODE.meta))
    want = desired(service("node-9100"), service("redis-9121", 9121))
    plans = [
        plan(want, ActualState(None, (), ())),  # new node and two services
        plan(want, actual_of(want)),  # nothing
        plan(want, ActualState(moved, want.services, want.checks)),  # the node alone
        plan(desired(service("node-9100")), actual_of(want)),  # one deregistration
        plan(desired(service("node-9100"), statuses={"node-9100": CRITICAL}), actual_of(want)),
    ]
    assert [logical_writes(p) for p in plans] == [len(plan_requests(p, None)) for p in plans]
    assert [logical_writes(p) for p in plans] == [2, 0, 1, 1, 2]
