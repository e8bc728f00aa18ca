"""identify.discover over a fake host: which listeners cost a process-owner lookup, and why.

Looking up a socket's owner walks every process's descriptors, O(connections) on a busy host
(design decision 7): only listeners whose outcome can depend on the process may ask for it.
"""

from __future__ import annotations

from typing import Dict, Set

from helpers.fakes import FakeHost, FakeResolver
from regagent.config.model import Config, DiscoveryConfig, TelemetryConfig
from regagent.discovery.identify import (
    EXCLUDED,
    IDENTIFIED,
    NOT_CANDIDATE,
    NOT_EXPORTER,
    Finding,
    discover,
)
from regagent.discovery.processes import ProcessInfo

# A packaged exporter: /usr/bin/prometheus-node-exporter is root's alone, so its name is evidence.
NODE_EXPORTER = ProcessInfo(
    4242, "prometheus-node-e", "/usr/bin/prometheus-node-exporter", exe_trusted=True
)


def run(host: FakeHost, resolver: FakeResolver, **discovery: object) -> Dict[int, Finding]:
    config = Config(
        discovery=DiscoveryConfig(**discovery),  # type: ignore[arg-type]
        telemetry=TelemetryConfig(listen=":9900"),
    )
    result = discover(config, resolver=resolver, list_listeners=host.listeners, prober=host.prober)
    return {finding.port: finding for finding in result.findings}


def inodes(host: FakeHost, *ports: int) -> Set[int]:
    return {lst.inode for port in ports for lst in host.listening[port]}


def test_owner_looked_up_only_where_the_process_name_can_matter() -> None:
    host = FakeHost()
    host.listen(9100)  # node_exporter's default port: a candidate already
    host.listen(9500)  # in a configured range: a candidate already
    host.listen(41000)  # unknown port on a wildcard address: only the name can tell
    host.listen(41001, "198.51.100.7", serving=False)  # same, on a specific address
    host.listen(41002, "127.0.0.1")  # loopback only: never registered
    host.listen(41003, "::1")
    host.listen(9104)  # excluded port (mysqld_exporter's default)
    host.listen(9900)  # regagent's own telemetry port
    owners = {lst.inode: NODE_EXPORTER for lst in host.listening[41000]}
    resolver = FakeResolver(owners)
    found = run(host, resolver, port_ranges=((9500, 9500),), exclude_ports=(9104,))
    assert resolver.asked == inodes(host, 41000, 41001)
    assert found[9100].outcome == IDENTIFIED and found[9100].process is None
    assert found[9500].outcome == IDENTIFIED
    assert found[41000].outcome == IDENTIFIED  # recognised by its process name
    assert found[41000].candidate_reasons == ("process prometheus-node-e",)  # comm, 15 chars
    assert found[41001].outcome == NOT_CANDIDATE
    assert found[9104].outcome == EXCLUDED


def test_exclude_processes_still_applies_to_candidates_by_port() -> None:
    host = FakeHost()
    host.listen(9100)
    host.listen(9500)
    host.listen(41002, "127.0.0.1")
    owners = {lst.inode: NODE_EXPORTER for lst in host.listeners()}
    resolver = FakeResolver(owners)
    found = run(
        host, resolver, port_ranges=((9500, 9500),), exclude_processes=("prometheus-node-*",)
    )
    assert resolver.asked == inodes(host, 9100, 9500)  # loopback-only still not looked up
    assert found[9100].outcome == EXCLUDED
    assert found[9500].outcome == EXCLUDED
    assert "exclude_processes (prometheus-node-*)" in found[9100].reason
    assert host.probes == 0  # excluded: never probed


def test_the_owner_of_a_candidate_by_port_is_looked_up_only_when_its_answer_names_nothing() -> None:
    host = FakeHost()
    host.listen(9500)  # answers node_exporter metrics
    host.listen(9501, serving=False)  # times out: its process may still name it
    host.listen(9502, serving=False)  # times out, and its process vouches for nothing
    mongodb = ProcessInfo(
        77, "prometheus-mong", "/usr/bin/prometheus-mongodb-exporter", uid=102,
        user="prometheus", exe_trusted=True, system_user=True,
    )  # fmt: skip
    as_a_user = ProcessInfo(
        78, "prometheus-mong", "/usr/bin/prometheus-mongodb-exporter", uid=1000,
        user="someone", exe_trusted=True, system_user=False,
    )  # fmt: skip
    owners = {lst.inode: mongodb for lst in host.listening[9501]}
    owners.update({lst.inode: as_a_user for lst in host.listening[9502]})
    resolver = FakeResolver(owners)
    found = run(host, resolver, port_ranges=((9500, 9502),))
    assert resolver.asked == inodes(host, 9501, 9502)
    slow = found[9501]
    assert (slow.outcome, slow.exporter, slow.identified_by) == (
        IDENTIFIED,
        "mongodb_exporter",
        "process",
    )
    assert slow.problem == "timed out after 2s" and slow.process == mongodb
    assert slow.reason == (
        "/usr/bin/prometheus-mongodb-exporter run by prometheus; its answer: timed out after 2s"
    )
    assert (found[9502].outcome, found[9502].process) == (NOT_EXPORTER, as_a_user)
    assert (found[9500].identified_by, found[9500].process) == ("build_info", None)
