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

# structlog's optional extras (an import of each is tried, and halted:
# cli.without_structlog_extras), and python-consul2 with what it drags in.
NEVER = (
    "rich.console",
    "rich.traceback",
    "colorama.initialise",
    "greenlet._greenlet",
    "asyncio.base_events",  # asyncio itself is a stand-in until used: cli.asyncio_when_used
    "consul",
    "requests",
    "urllib3",
)
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


def test_structlogs_extras_stay_unimported_where_they_are_installed(tmp_path: Path) -> None:
    """rich, colorama and greenlet planted on the path, each failing loudly if imported: the
    command runs and logs as it does without them."""
    for name in ("rich", "colorama", "greenlet"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise RuntimeError('{name} imported')\n")
    config = write_config(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "regagent", "-c", str(config), "--log-level", "debug", "sync"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert "imported" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 1, result.stderr[-2000:]  # no Consul: one line, exit 1
    assert "regagent: " in result.stderr


def test_asyncio_is_imported_when_used_and_then_works() -> None:
    """After the process policy, structlog imports only asyncio's stand-in; code that uses
    asyncio (structlog's own async logging among it) gets the real module and works."""
    code = (
        "import sys\n"
        "from regagent.cli import process_policy\n"
        "process_policy()\n"
        "import structlog\n"
        "print('before', 'asyncio.base_events' in sys.modules)\n"
        "import asyncio\n"
        "structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(20))\n"
        "asyncio.run(structlog.get_logger().ainfo('async_hello'))\n"
        "from asyncio import sleep\n"
        "asyncio.run(sleep(0))\n"
        "print('after', 'asyncio.base_events' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "before False"
    assert "async_hello" in lines[1]
    assert lines[-1] == "after True"


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
