"""Driving the Consul emulator for regagent tests of the host's node: a configuration file for
a catalog-mode regagent, the node's checks and services as health readers see them, and writes
made by a third party (an operator's `consul` command, another tool) over the HTTP API."""

from __future__ import annotations

import contextlib
import json
import os
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import yaml

from consulsim import SimCluster

NODE = "regagent-session-host"


def write_config(
    tmp_path: Path,
    cluster: SimCluster,
    services: List[Dict[str, Any]],
    *,
    node: str = NODE,
    **sections: Any,
) -> Path:
    """A catalog-mode configuration on loopback with short timeouts and a 1 s interval."""
    consul_section = {
        "servers": list(cluster.addresses),
        "connect_timeout": "1s",
        "read_timeout": "1s",
        "cooldown_initial": "200ms",
        "cooldown_max": "1s",
        **sections.pop("consul", {}),
    }
    sync_section = {
        "interval": "1s",
        "jitter": "50ms",
        "state_dir": str(tmp_path / "state"),
        **sections.pop("sync", {}),
    }
    config = {
        "consul": consul_section,
        "node": {"name": node, "address": "127.0.0.1"},
        "sync": sync_section,
        "discovery": {"enabled": False},
        "services": services,
        **sections,
    }
    path = tmp_path / "regagent.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def static(name: str, port: int) -> Dict[str, Any]:
    """A static service without a probe: passing unless a node check says otherwise."""
    return {"name": name, "port": port, "check": {"type": "none"}}


def node_checks(cluster: SimCluster, node: str = NODE) -> Dict[str, Any]:
    """`/v1/health/node/<node>` by CheckID."""
    path = f"/v1/health/node/{urllib.parse.quote(node)}?stale"
    return {c["CheckID"]: c for c in cluster.get(cluster.live_server(), path)}


def service_health(cluster: SimCluster, service: str, passing: bool = False) -> List[Any]:
    """`/v1/health/service/<name>` (with `?passing`: only instances whose checks all pass)."""
    query = "?stale&passing" if passing else "?stale"
    path = f"/v1/health/service/{urllib.parse.quote(service)}{query}"
    return list(cluster.get(cluster.live_server(), path))


def sessions_of(cluster: SimCluster, node: str = NODE) -> List[Dict[str, Any]]:
    path = f"/v1/session/node/{urllib.parse.quote(node)}?stale"
    return list(cluster.get(cluster.live_server(), path))


def put(cluster: SimCluster, path: str, body: Optional[Any] = None, server: int = -1) -> Any:
    """A PUT as a third party makes it; the decoded answer (errors raise HTTPError)."""
    i = cluster.live_server() if server < 0 else server
    data = b"" if body is None else json.dumps(body).encode()
    request = urllib.request.Request(cluster.url(i) + path, data=data, method="PUT")
    with urllib.request.urlopen(request, timeout=10, context=cluster.ssl_context()) as answer:
        text = answer.read()
    return json.loads(text) if text else None


class DeclaredNodeChecks:
    """A `NodeCheckSource` whose claim the test sets: the IDs it owns, the checks it wants."""

    def __init__(self, owned: Any = (), wanted: Any = ()) -> None:
        self.owned = frozenset(owned) | {c.check_id for c in wanted}
        self.wanted = tuple(wanted)

    def node_checks(self, actual: Any) -> Any:
        from regagent.nodechecks import NodeCheckClaim

        return NodeCheckClaim(self.owned, self.wanted)


class DaemonProcess:
    """`regagent run` as a real process, its log (JSON lines) in a file emptied at its start;
    stopped by its pid: `stop()` sends SIGTERM and waits (bounded), `kill()` is SIGKILL; both
    idempotent."""

    def __init__(self, config: Path, log_path: Path) -> None:
        import subprocess
        import sys

        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop/kill)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "regagent", "-c", str(config), "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 25.0) -> int:
        import signal as signals

        self.signal(signals.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except Exception:
            self.kill()
            raise
        self._log.close()
        return code

    def kill(self) -> None:
        import signal as signals

        self.signal(signals.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def events(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
        """The log lines that are JSON objects (the daemon logs JSON when not on a terminal);
        with `name`, only that event's."""
        out: List[Dict[str, Any]] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and (name is None or item.get("event") == name):
                out.append(item)
        return out


@contextlib.contextmanager
def daemon_process(config: Path, log_path: Optional[Path] = None) -> Iterator[DaemonProcess]:
    """A `DaemonProcess` (its log `daemon.log` beside `config` unless given) for a `with` block:
    stopped by its pid however the block ends (SIGTERM; SIGKILL and an error if it hangs)."""
    daemon = DaemonProcess(config, log_path or config.parent / "daemon.log")
    try:
        yield daemon
    finally:
        daemon.stop()


def wait_for(what: str, predicate: Any, timeout: float = 20.0, step: float = 0.05) -> Any:
    """Polls `predicate` until it returns something truthy (returned), at most `timeout`
    seconds: a bounded loop, with what was awaited in the failure."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)
