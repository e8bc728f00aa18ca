"""Debian 12's real exporters, started as their units start them, found and registered by name.

Every `prometheus-*-exporter` package installed here is started with its defaults inside a
network namespace made for the module (tests/real_exporters.py): its default port never clashes
with this host's own exporters, and nothing outside the namespace is probed. A three-server
Consul emulator listens on the host's end of the namespace's veth pair; regagent runs inside.

For every exporter that listens with its defaults (tests/real_exporters.py `LISTENING`, 22 on
Debian 12): `regagent discover --format json` names it with the exporter's own version (or none
where it publishes none) and the evidence that named it, and one `regagent sync` registers it
under that name, version and Meta `identified_by`, with a check that says what a 10 s scrape
would see (mongodb_exporter, 12 s while MongoDB is down: critical). An exporter regagent
misses carries its reason in `Expected.issue24` and is an expected failure (strict: it fails
the run once it passes, so whoever fixes one removes its mark); none does since issue 24.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import real_exporters
from consulsim import SimCluster
from real_exporters import LISTENING, Expected, Namespace, Running
from regagent.discovery.exporters import load_exporter_table

REASON = real_exporters.skip_reason()
pytestmark = pytest.mark.skipif(bool(REASON), reason=REASON or "runs")
NODE = "real-exporters"


@pytest.fixture(scope="module")
def running() -> Iterator[Tuple[Namespace, Dict[str, Running]]]:
    """Every installed exporter package started in a fresh namespace; stopped by pid after."""
    with real_exporters.exporters_running() as (namespace, started, _):
        yield namespace, {r.launch.package: r for r in started}


@pytest.fixture(scope="module")
def cluster(running: Tuple[Namespace, Dict[str, Running]]) -> Iterator[SimCluster]:
    """The emulator on the host's end of the veth pair, reachable from inside the namespace."""
    namespace, _ = running
    sim = SimCluster(servers=3, bind=namespace.host_ip, election_delay="0.3s", rpc_hold="0.2s")
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def config(cluster: SimCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_exporters.write_config(
        tmp_path_factory.mktemp("real-exporters") / "regagent.yaml",
        list(cluster.addresses),
        node={"name": NODE},
    )


@pytest.fixture(scope="module")
def discovered(
    running: Tuple[Namespace, Dict[str, Running]], config: Path
) -> Dict[int, Dict[str, Any]]:
    """`regagent discover --format json` once, inside the namespace: its listeners by port."""
    namespace, _ = running
    shown = real_exporters.regagent(namespace, config, "discover", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    return {item["port"]: item for item in report["listeners"]}


@pytest.fixture(scope="module")
def registered(
    running: Tuple[Namespace, Dict[str, Running]], config: Path, cluster: SimCluster
) -> Dict[str, Any]:
    """One `regagent sync` inside the namespace; the node's services as the catalog has them."""
    namespace, _ = running
    synced = real_exporters.regagent(namespace, config, "sync")
    assert synced.returncode == 0, synced.stderr
    node = cluster.catalog_node_services(NODE)
    assert node is not None, synced.stderr
    services: Dict[str, Any] = node["Services"]
    return services


@pytest.fixture(scope="module")
def checks(registered: Dict[str, Any], cluster: SimCluster) -> Dict[str, Any]:
    """The node's checks after that sync, by service ID."""
    found = cluster.get(cluster.live_server(), f"/v1/health/node/{NODE}?stale")
    return {check["ServiceID"]: check for check in found if check["ServiceID"]}


def cases() -> List[Any]:
    """One case per exporter that listens; issue 24's ones expected to fail (strictly)."""
    return [
        pytest.param(
            expected,
            id=expected.package,
            marks=[pytest.mark.xfail(strict=True, reason=f"issue 24: {expected.issue24}")]
            if expected.issue24
            else [],
        )
        for expected in LISTENING
    ]


def listening_exporter(
    expected: Expected, running: Tuple[Namespace, Dict[str, Running]]
) -> Running:
    """The started exporter, which must listen where it was measured to (else: skip/fail)."""
    if not real_exporters.installed(expected.package):
        pytest.skip(f"{expected.package} is not installed (apt-get install {expected.package})")
    started = running[1].get(expected.package)
    assert started is not None, f"{expected.package} could not be started"
    assert expected.port in started.ports, (
        f"{expected.package} does not listen on {expected.port}: {started.log_tail()}"
    )
    return started


def name_and_version(expected: Expected) -> Tuple[Optional[str], Optional[str]]:
    return expected.exporter, expected.expected_version()


@pytest.mark.parametrize("expected", cases())
def test_discover_names_it_with_its_own_version(
    expected: Expected,
    running: Tuple[Namespace, Dict[str, Running]],
    discovered: Dict[int, Dict[str, Any]],
) -> None:
    listening_exporter(expected, running)
    assert expected.port is not None
    found = discovered.get(expected.port)
    assert found is not None, f"discover does not list port {expected.port}"
    assert (found["exporter"], found["version"]) == name_and_version(expected), found
    assert found["outcome"] == "identified", found
    assert found["identified_by"] == expected.identified_by, found


@pytest.mark.parametrize("expected", cases())
def test_sync_registers_it_under_its_name(
    expected: Expected,
    running: Tuple[Namespace, Dict[str, Running]],
    registered: Dict[str, Any],
) -> None:
    listening_exporter(expected, running)
    assert expected.exporter is not None and expected.port is not None
    spec = load_exporter_table().by_name[expected.exporter]
    service_id = f"{spec.service_name}-{expected.port}"
    assert service_id in registered, sorted(registered)
    meta = registered[service_id]["Meta"]
    version = expected.expected_version() or "unknown"
    assert (meta["exporter"], meta["exporter_version"]) == (expected.exporter, version), meta
    assert meta["identified_by"] == expected.identified_by, meta
    assert registered[service_id]["Address"] == running[0].inner_ip


@pytest.mark.parametrize("expected", cases())
def test_each_check_says_what_a_scrape_would_see(
    expected: Expected,
    running: Tuple[Namespace, Dict[str, Running]],
    checks: Dict[str, Any],
) -> None:
    listening_exporter(expected, running)
    assert expected.exporter is not None and expected.port is not None
    spec = load_exporter_table().by_name[expected.exporter]
    check = checks[f"{spec.service_name}-{expected.port}"]
    assert check["Status"] == expected.check, check
    if expected.check == "critical":  # a target that does not answer within 10 s
        no_answer = "no metrics from /metrics (timed out after 10s)"
        assert check["Output"] == f"{expected.exporter} on :{expected.port}: {no_answer}"
