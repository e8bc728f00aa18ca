"""The exporter table: shipped as package data, well-formed, and matched by fingerprint."""

from __future__ import annotations

import importlib.resources

import pytest

from regagent.discovery.exporters import (
    ExporterTableError,
    load_exporter_table,
    parse_exporter_table,
)


def test_table_is_package_data_with_enough_exporters() -> None:
    text = importlib.resources.files("regagent").joinpath("data/exporters.yaml").read_text()
    assert "Default-port-allocations" in text  # sources are cited in the header
    table = load_exporter_table()
    assert len(table.exporters) >= 40
    for spec in table.exporters:
        assert spec.metrics_path.startswith("/")
        assert spec.fingerprint


def test_upstream_and_debian_binary_names() -> None:
    table = load_exporter_table()
    for binary in ("node_exporter", "prometheus-node-exporter", "prometheus-mysqld-exporter"):
        assert binary in table.by_binary
    assert table.by_port[9100][0].name == "node_exporter"
    assert table.by_name["postgres_exporter"].port == 9187


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ({"node_exporter_build_info", "node_cpu_seconds_total", "go_info"}, "node_exporter"),
        (
            {"haproxy_exporter_build_info", "haproxy_up", "haproxy_process_nbproc"},
            "haproxy_exporter",
        ),
        ({"haproxy_process_nbproc", "haproxy_frontend_bytes_in_total"}, "haproxy"),
        ({"vm_app_version", "vmagent_remotewrite_requests_total"}, "vmagent"),
        ({"vm_app_version"}, "victoria_metrics"),
        ({"namedprocess_namegroup_num_procs"}, "process_exporter"),
        ({"go_build_info", "process_cpu_seconds_total", "python_info"}, None),
    ],
)
def test_longest_fingerprint_wins(names: set[str], expected: str | None) -> None:
    spec = load_exporter_table().match_fingerprint(names)
    assert (spec.name if spec else None) == expected


def test_service_names_are_dns_safe() -> None:
    for spec in load_exporter_table().exporters:
        assert "_" not in spec.service_name


@pytest.mark.parametrize(
    "text",
    [
        "exporters: nope",
        "exporters:\n  - {name: a, port: 70000, fingerprint: [a_]}",
        "exporters:\n  - {name: a, port: 1, fingerprint: []}",
        "exporters:\n  - {name: a, port: 1, fingerprint: [x], colour: red}",
        "exporters:\n  - {name: a, port: 1, fingerprint: [x]}\n"
        "  - {name: a, port: 2, fingerprint: [y]}",
        "exporters:\n  - {name: a, port: 1, metrics_path: metrics, fingerprint: [x]}",
    ],
)
def test_malformed_tables_are_rejected(text: str) -> None:
    with pytest.raises(ExporterTableError):
        parse_exporter_table(text)
