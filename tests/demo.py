"""The README's first command: a real `regagent sync` of this host, with no Consul around.

Starts the bundled three-server Consul emulator, discovers this host's exporters (a sample
static service stands in when none is found), runs `regagent sync` against the emulator, shows
what Consul now holds, and stops the emulator.

    python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/python -m tests.demo
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from consulsim import SimCluster

SAMPLE_SERVICE = {"name": "sample-app", "port": 8080, "tags": ["demo"], "check": {"type": "none"}}


def regagent(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "regagent", "-c", str(config), *args]
    print(f"\n$ regagent -c {config.name} {' '.join(args)}", flush=True)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result


def write_config(path: Path, cluster: SimCluster, state_dir: Path, services: List[Any]) -> None:
    config: Dict[str, Any] = {
        "consul": {"servers": cluster.addresses},
        # The emulator runs on this host, so `auto` would pick this host's own network address;
        # the demo stays on loopback like everything it starts.
        "node": {"address": "127.0.0.1"},
        "sync": {"state_dir": str(state_dir)},
        "services": services,
    }
    path.write_text(yaml.safe_dump(config))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="regagent-demo-") as tmp:
        workdir = Path(tmp)
        config = workdir / "regagent.yaml"
        with SimCluster(servers=3) as cluster:
            print(f"Consul emulator: three servers at {', '.join(cluster.addresses)}")
            write_config(config, cluster, workdir / "state", [])
            found = regagent(config, "discover", "--format", "json")
            discovered = json.loads(found.stdout)["services"] if found.returncode == 0 else []
            if not discovered:
                print("\nNo exporter found on this host: registering a sample static service.")
                write_config(config, cluster, workdir / "state", [SAMPLE_SERVICE])
            regagent(config, "sync", "--dry-run")
            synced = regagent(config, "sync")
            regagent(config, "status")
            again = regagent(config, "sync")
            node = socket.gethostname()
            held = cluster.catalog_node_services(node)
            print(f"\nConsul's catalog entry for node {node} (GET /v1/catalog/node/{node}):")
            print(json.dumps(held, indent=2))
        print("\nEmulator stopped.")
        return 0 if synced.returncode == 0 and again.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
