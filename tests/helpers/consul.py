"""regagent against the emulator (tests/consulsim): configuration files, the command and the
daemon as real processes, and what Consul holds for the test's node."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import yaml

from consulsim import SimCluster
from regagent.app import App, build
from regagent.config import load_config
from regagent.model import ServiceIntent, ServiceRegistration

NODE = "regagent-test-host"
REGISTER = "PUT /v1/catalog/register"
DEREGISTER = "PUT /v1/catalog/deregister"
TXN = "PUT /v1/txn"
# regagent starts from the server its node name picks: a test reads through another.
OTHER_SERVER = 2


def fast_cluster(**options: Any) -> SimCluster:
    """Three emulated servers with short wait cap, election delay and RPC hold, so fault tests
    run in well under a second each; not started yet (`options`: TLS, or another of these)."""
    fast: Dict[str, Any] = {
        "servers": 3,
        "wait_cap": "2s",
        "default_wait": "2s",
        "election_delay": "0.3s",
        "rpc_hold": "0.2s",
        "ae_interval": "0.5s",
    }
    return SimCluster(**{**fast, **options})


def write_config(
    tmp_path: Path, cluster: SimCluster, services: List[Dict[str, Any]], **sections: Any
) -> Path:
    """A configuration of the test's node on `cluster`: short timeouts, discovery off, state in
    `tmp_path`; `sections` add or replace top-level sections (`consul` is merged)."""
    consul_section = {
        "servers": list(cluster.addresses),
        "connect_timeout": "1s",
        "read_timeout": "1s",
        "cooldown_initial": "200ms",
        "cooldown_max": "1s",
        **sections.pop("consul", {}),
    }
    config = {
        "consul": consul_section,
        # An explicit loopback address: `auto` never picks loopback, and tests stay on it.
        "node": {"name": NODE, "address": "127.0.0.1", "meta": {"rack": "r1"}},
        "sync": {"interval": "1s", "jitter": "50ms", "state_dir": str(tmp_path / "state")},
        "discovery": {"enabled": False},
        "services": services,
        **sections,
    }
    path = tmp_path / "regagent.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)  # it may hold a token
    return path


def static(name: str, port: int, tags: Optional[List[str]] = None) -> Dict[str, Any]:
    """A static service without a check."""
    return {"name": name, "port": port, "tags": tags or [], "check": {"type": "none"}}


def regagent(
    config: Path, *args: str, env: Optional[Dict[str, str]] = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`regagent -c CONFIG ARGS...` as a process, run to its end."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "regagent", "-c", str(config), *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


class Daemon(subprocess.Popen):  # type: ignore[type-arg]
    """A `regagent run` process; `stderr_text` is its stderr once it has ended."""

    stderr_text = ""


@contextlib.contextmanager
def running_daemon(config: Path) -> Iterator[Daemon]:
    """`regagent run` as a real process; SIGTERM on exit (KILL if it hangs), stderr kept."""
    daemon = Daemon(
        [sys.executable, "-m", "regagent", "-c", str(config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield daemon
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.stderr_text = daemon.communicate(timeout=15)[1]
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.communicate()
            raise


def writes(cluster: SimCluster) -> int:
    return int(cluster.stats()["writes_applied"])


def endpoint_count(cluster: SimCluster, prefix: str) -> int:
    return sum(n for key, n in cluster.stats()["endpoints"].items() if key.startswith(prefix))


def node_services(cluster: SimCluster, node: str = NODE, token: str = "") -> Dict[str, Any]:
    data = cluster.get(cluster.live_server(), f"/v1/catalog/node/{node}?stale", token=token)
    return {} if data is None else dict(data["Services"])


def node_checks(cluster: SimCluster, node: str = NODE) -> Dict[str, Any]:
    i = cluster.live_server()
    return {c["CheckID"]: c for c in cluster.get(i, f"/v1/health/node/{node}?stale")}


def app_with(config_path: Path, services: List[ServiceRegistration]) -> App:
    """The app `regagent run` would build from `config_path`, with `services` as its only
    intents (static, no checks)."""
    config = load_config(str(config_path))
    intents = [ServiceIntent(s, "static") for s in services]
    return build(config, intent_source=lambda *_: intents)
