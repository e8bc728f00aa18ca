"""Each command imports what it uses and no more (the memory it saves: bench/footprint.py).

Read from `python -X importtime`, which lists every module a process imports, whenever it does.
The Consul servers are a closed loopback port: the daemon's first cycle fails at once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Set

import yaml

# structlog's optional renderer (an import of it is tried, and halted: cli.without_rich), and
# python-consul2 with what it drags in.
NEVER = ("rich.console", "rich.traceback", "consul", "requests", "urllib3")
METRICS = ("prometheus_client", "http.server", "regagent.metrics", "regagent.metrics_endpoint")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, telemetry: str = "") -> Path:
    config = {
        "consul": {"servers": [f"127.0.0.1:{closed_port()}"]},
        "node": {"name": "imports-host", "address": "127.0.0.1"},
        "sync": {"interval": "1s", "jitter": "0s", "state_dir": str(tmp_path)},
        "discovery": {"enabled": False},
        "telemetry": {"listen": telemetry},
        "log": {"format": "json"},
    }
    path = tmp_path / "regagent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def modules(stderr: str) -> Set[str]:
    """The modules a `-X importtime` run imported."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }


def among(found: Set[str], names: Iterable[str]) -> Set[str]:
    """The modules of `found` that are one of `names` or inside one of them."""
    return {m for m in found for name in names if m == name or m.startswith(name + ".")}


def test_check_config_imports_no_consul_client_and_no_metrics(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "regagent", "-c", str(config), "check-config"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = modules(result.stderr)
    assert "regagent.config" in found  # the listing works
    assert among(found, (*NEVER, *METRICS, "regagent.consul", "regagent.daemon")) == set()


def run_until_ready(config: Path, tmp_path: Path) -> Set[str]:
    """`regagent run` until its first cycle was attempted (READY=1), then stopped by pid."""
    notify_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        env.pop("PROMETHEUS_DISABLE_CREATED_SERIES", None)
        daemon = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "regagent", "-c", str(config), "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                notify.settimeout(max(0.1, deadline - time.monotonic()))
                if b"READY=1" in notify.recv(4096):
                    break
            daemon.send_signal(signal.SIGTERM)
            _, stderr = daemon.communicate(timeout=30)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    assert daemon.returncode == 0, stderr[-2000:]
    return modules(stderr)


def test_the_daemon_without_telemetry_imports_no_metrics_and_no_http_server(
    tmp_path: Path,
) -> None:
    found = run_until_ready(write_config(tmp_path), tmp_path)
    assert "regagent.daemon" in found and "regagent.consul.transport" in found
    assert among(found, (*NEVER, *METRICS)) == set()


def test_the_daemon_with_telemetry_imports_the_metrics_but_no_rich(tmp_path: Path) -> None:
    found = run_until_ready(write_config(tmp_path, f"127.0.0.1:{closed_port()}"), tmp_path)
    assert {"prometheus_client", "regagent.metrics", "regagent.metrics_endpoint"} <= found
    assert among(found, NEVER) == set()
