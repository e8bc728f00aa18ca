"""Shared pytest fixtures.

``consul_cluster``: a fresh three-server Consul emulator (tests/consulsim) per test, with short
wait cap, election delay and RPC hold so fault tests run in well under a second each.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from consulsim import SimCluster


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
