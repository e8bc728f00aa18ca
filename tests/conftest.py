"""Shared pytest fixtures.

``consul_cluster``: a fresh three-server Consul emulator (tests/consulsim) per test, with short
wait cap, election delay and RPC hold so fault tests run in well under a second each.
``tls_files``: a throwaway CA with server (127.0.0.1) and client certificates, made by openssl.

The test process keeps regagent's process policy (`regagent.cli.without_created_series`), set
before any test module imports prometheus-client, so in-process metrics look like the daemon's.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from consulsim import SimCluster
from regagent.cli import without_created_series
from tls_pki import TLSFiles, make_tls_files, openssl_available


def pytest_configure(config: pytest.Config) -> None:
    without_created_series()


@pytest.fixture
def consul_cluster() -> Iterator[SimCluster]:
    """A running 3-server emulator; stopped by pid when the test ends, pass or fail."""
    cluster = SimCluster(
        servers=3,
        wait_cap="2s",
        default_wait="2s",
        election_delay="0.3s",
        rpc_hold="0.2s",
        ae_interval="0.5s",
    )
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
