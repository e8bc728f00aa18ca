"""The desired state: service intents plus check results, in the canonical form regagent writes.

Pure. Intents come from `regagent.discovery` (discovered exporters and static services), the
results from `regagent.health`; the planner compares what this builds with what Consul holds.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, List, Mapping, Sequence

from regagent.model import (
    PASSING,
    CheckState,
    DesiredState,
    HealthProbe,
    NodeCheck,
    NodeRegistration,
    Result,
    ServiceIntent,
    ServiceRegistration,
    canonical_service,
    service_check_id,
)

NO_CHECK_OUTPUT = "no health check configured"


def desired_state(
    node: NodeRegistration,
    intents: Sequence[ServiceIntent],
    results: Mapping[str, Result],
    *,
    with_checks: bool = True,
    node_checks: Sequence[NodeCheck] = (),
    owned_node_checks: FrozenSet[str] = frozenset(),
) -> DesiredState:
    """Canonical registrations, each with its check: the status the intent knows, else its
    probe's result (by service ID), else passing. `with_checks` False when someone else
    (a Consul agent) runs the checks and owns their status: then each intent's probe is the
    check definition handed to it. `node_checks` are the node-level checks wanted now, out of
    the `owned_node_checks` IDs regagent manages (`regagent.nodechecks`)."""
    services: List[ServiceRegistration] = []
    checks: List[CheckState] = []
    probes: Dict[str, HealthProbe] = {}
    for intent in sorted(intents, key=lambda i: i.service.id):
        service = canonical_service(intent.service)
        services.append(service)
        if not with_checks:
            if intent.probe is not None:
                probes[service.id] = intent.probe
            continue
        if intent.status is not None:
            status, output = intent.status
        elif intent.probe is not None:
            status, output = results[service.id]
        else:
            status, output = PASSING, NO_CHECK_OUTPUT
        checks.append(
            CheckState(
                service_check_id(service.id), service.id, f"{service.name} health", status, output
            )
        )
    return DesiredState(
        node=node,
        services=tuple(services),
        checks=tuple(checks),
        probes=probes,
        node_checks=tuple(sorted(node_checks, key=lambda c: c.check_id)),
        owned_node_checks=frozenset(owned_node_checks) | {c.check_id for c in node_checks},
    )
