"""regagent's own endpoint (`regagent-<port>`, telemetry.listen) is never a discovered exporter.

Before: from the second cycle on, the daemon found its own service in Consul, missing from the
discovery state file, and adopted it as a vanished exporter ("discovery_state_adopted"); the
adopted copy replaced the service it registers itself, and its check turned critical ("not
serving metrics") once the flap guard gave up: `up` said the agent was down while it ran.
Now adoption takes back only what discovery registered: not the service of regagent's own
endpoint, not a configured static service. A real daemon against the emulator.
"""

from __future__ import annotations

import time
from pathlib import Path

from consulsim import SimCluster
from helpers.cli import events
from helpers.consul import node_checks, node_services, running_daemon, static, write_config
from helpers.discovery import hermetic_discovery
from helpers.ports import free_port


def test_the_daemon_never_adopts_its_own_endpoint_or_a_static_service(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    telemetry, unused = free_port(), free_port()
    own = f"regagent-{telemetry}"
    static_service = static("queue", 9000)
    static_service["meta"] = {"exporter": "rabbitmq"}  # looks like a discovered one
    config = write_config(
        tmp_path,
        consul_cluster,
        [static_service],
        telemetry={"listen": f"127.0.0.1:{telemetry}"},
        discovery=hermetic_discovery([unused]),
        sync={
            "interval": "1s",
            "jitter": "50ms",
            "state_dir": str(tmp_path / "state"),
            "failures_before_critical": 1,
        },
    )
    with running_daemon(config) as daemon:
        deadline = time.monotonic() + 20
        while own not in node_services(consul_cluster) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(4)  # four more cycles: adoption happened at the second, critical at the third
        checks = node_checks(consul_cluster)
    assert daemon.returncode == 0, daemon.stderr_text
    assert set(node_services(consul_cluster)) == {own, "queue-9000"}
    assert checks[f"service:{own}"]["Status"] == "passing", checks[f"service:{own}"]["Output"]
    assert events(daemon.stderr_text, "discovery_state_adopted") == []
    assert events(daemon.stderr_text, "exporter_vanished") == []
