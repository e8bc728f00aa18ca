"""Text output never carries raw control characters, whatever Consul or a process holds."""

from __future__ import annotations

from pathlib import Path

import consul

from consulsim import SimCluster
from helpers.consul import NODE, regagent, static, write_config
from regagent.render.escape import safe_line


def test_safe_line_escapes_control_and_format_characters() -> None:
    assert safe_line("plain text: ünïcode ok") == "plain text: ünïcode ok"
    assert safe_line("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert safe_line("two\nlines\r") == "two\\x0alines\\x0d"
    assert safe_line("bidi \u202e trick") == "bidi \\u202e trick"


def test_status_and_sync_escape_what_another_client_wrote(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, consul_cluster, [static("queue", 9000)])
    assert regagent(config, "sync").returncode == 0
    host, port = consul_cluster.host_port(0)
    meta = consul_cluster.catalog_node_services(NODE)["Node"]["Meta"]
    consul.Consul(host=host, port=port).catalog.register(
        NODE,
        "127.0.0.1",
        service={"ID": "evil\x1b[2J", "Service": "evil", "Port": 1, "Address": "::1"},
        node_meta=meta,
    )
    status = regagent(config, "status")
    assert status.returncode == 0, status.stderr
    assert "\x1b" not in status.stdout
    assert "evil\\x1b[2J [::1]:1" in status.stdout
    planned = regagent(config, "sync", "--dry-run")
    assert "\x1b" not in planned.stdout
