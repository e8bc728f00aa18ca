"""Shared pytest fixtures.

``consul_cluster``: a fresh three-server Consul emulator (tests/consulsim) per test, with short
wait cap, election delay and RPC hold so fault tests run in well under a second each.
``tls_files``: a throwaway CA with server (127.0.0.1) and client certificates, made by openssl.
``processes``: starts helper processes, each stopped by pid when the test ends.
``remote_write_sink``: a remote-write endpoint that discards every push (vmagent needs one).
``deb_package``: `packaging/build deb` of this tree, once per session (the packaging tests and
the systemd tests share it; building installs the build dependencies: root only).

The test process keeps regagent's process policy (`regagent.cli.without_created_series`), set
before any test module imports prometheus-client, so in-process metrics look like the daemon's.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from consulsim import SimCluster
from helpers.consul import fast_cluster
from regagent.cli import without_created_series
from tls_pki import TLSFiles, make_tls_files, openssl_available


def pytest_configure(config: pytest.Config) -> None:
    without_created_series()


@pytest.fixture
def consul_cluster() -> Iterator[SimCluster]:
    """A running 3-server emulator; stopped by pid when the test ends, pass or fail."""
    cluster = fast_cluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """CA, server and client certificates made at test time in a temporary directory."""
    if not openssl_available():
        pytest.skip("the openssl command is not installed: it makes the test certificates")
    return make_tls_files(tmp_path_factory.mktemp("tls"))


class _SinkHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.posts += 1  # type: ignore[attr-defined]
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def remote_write_sink() -> Iterator[str]:
    """A remote-write endpoint that accepts and discards every push (vmagent needs one)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SinkHandler)
    server.posts = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/write"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start helper processes; every one is killed by pid at teardown, pass or fail."""
    started: List[subprocess.Popen[bytes]] = []

    def start(args: List[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture(scope="session")
def deb_package() -> Path:
    """dist/regagent_<version>_all.deb, built from this tree once per test session."""
    # CI runs as root on a throwaway machine; anywhere else this must fail loudly, not skip.
    assert os.geteuid() == 0, "building the .deb installs its build dependencies: run as root"
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [str(repo / "packaging" / "build"), "deb"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, f"packaging/build deb failed:\n{result.stdout}{result.stderr}"
    path = Path(result.stdout.strip().splitlines()[-1])
    assert re.fullmatch(r"regagent_[^_]+_all\.deb", path.name) and path.is_file(), result.stdout
    return path
