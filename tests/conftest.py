"""Shared pytest fixtures.

``consul_cluster``: a fresh three-server Consul emulator (tests/consulsim) per test, with short
wait cap, election delay and RPC hold so fault tests run in well under a second each.
``tls_files``: a throwaway CA with server (127.0.0.1) and client certificates, made by openssl.
``deb_package``: `packaging/build deb` of this tree, once per session (the packaging tests and
the systemd tests share it; building installs the build dependencies: root only).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from consulsim import SimCluster
from tls_pki import TLSFiles, make_tls_files, openssl_available


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
