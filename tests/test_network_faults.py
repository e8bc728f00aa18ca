"""The network faults that held in the hostile test, kept as tests so that they stay held: packet
loss and one-way partitions played for real by XDP on a veth pair between two network namespaces
(tests/netfault.py), and 2-5 s of latency through a delaying proxy on loopback.

The emulator runs in namespace b (its servers on SERVER, its control API on CONTROL, which no
fault touches); regagent runs in this process, whose test thread is moved into namespace a for
the test (threads and sockets it creates are there too). Bounded: a few to a few tens of seconds
each; no wall-clock assertions."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Iterator, List

import pytest

import netfault
from consulsim import SimCluster
from helpers.consul import NODE, node_services, write_config
from netfault import CLIENT, CONTROL, SERVER, DelayingProxy, Link, entered
from regagent.app import App, build
from regagent.config import load_config
from regagent.errors import ConsulUnreachable
from regagent.model import ServiceIntent, ServiceRegistration

pytestmark = pytest.mark.skipif(
    netfault.available() is not None, reason=f"network faults: {netfault.available()}"
)


@pytest.fixture
def link() -> Iterator[Link]:
    made = Link()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def remote_cluster(link: Link) -> Iterator[SimCluster]:
    """The emulator in namespace b; the test itself runs in namespace a until it ends."""
    with entered(link.client_ns):
        cluster = SimCluster(
            bind=SERVER,
            control_bind=CONTROL,
            netns=link.server_ns,
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


class Services:
    """The static services the engine is asked for; a test adds to them between cycles."""

    def __init__(self) -> None:
        self.wanted: List[ServiceRegistration] = []

    def add(self, port: int) -> None:
        self.wanted.append(ServiceRegistration(f"svc{port}-{port}", f"svc{port}", port, CLIENT))

    def __call__(self, *_: Any) -> List[ServiceIntent]:
        return [ServiceIntent(service, "static") for service in self.wanted]


def app_for(tmp_path: Path, cluster: SimCluster, services: Services, **consul: str) -> App:
    path = write_config(
        tmp_path,
        cluster,
        [],
        consul=consul,
        node={"name": NODE, "address": CLIENT},
    )
    return build(load_config(str(path)), intent_source=services)


def test_the_catalog_is_kept_true_through_30_percent_packet_loss(
    link: Link, remote_cluster: SimCluster, tmp_path: Path
) -> None:
    """30 % of the packets lost each way, regagent's default timeouts. TCP recovers; a request
    that loses its SYN twice times out and fails over. Each cycle has a new service to write:
    most cycles write it (the hostile test saw 18 of 18), and every one is registered at the
    end."""
    services = Services()
    app = app_for(
        tmp_path,
        remote_cluster,
        services,
        connect_timeout="2s",
        read_timeout="10s",
        cooldown_initial="200ms",
        cooldown_max="1s",
    )
    link.drop("server", "dst", SERVER, 30)  # requests
    link.drop("client", "src", SERVER, 30)  # answers
    good = 0
    for cycle in range(8):
        services.add(9000 + cycle)
        report = app.engine.cycle()
        good += report.error is None
        assert app.pool.wait_idle(20)
    assert good >= 4, f"{good} of 8 cycles in sync"
    link.heal()
    assert app.engine.cycle().error is None
    assert set(node_services(remote_cluster)) == {s.id for s in services.wanted}


@pytest.mark.parametrize("cut", ["answers", "requests"])
def test_a_partition_fails_cycles_cleanly_and_the_first_cycle_after_it_heals_writes(
    link: Link, remote_cluster: SimCluster, tmp_path: Path, cut: str
) -> None:
    """Every server cut off one way (their answers, or the requests to them): cycles fail as
    unreachable and write nothing; when the link heals, the next cycle writes what changed
    meanwhile, though every server's cool-down (30 s and more) is far from over."""
    services = Services()
    services.add(9000)
    app = app_for(
        tmp_path,
        remote_cluster,
        services,
        connect_timeout="1s",
        read_timeout="1s",
        cooldown_initial="30s",
        cooldown_max="5m",
    )
    assert app.engine.cycle().error is None
    if cut == "answers":
        link.drop("client", "src", SERVER, 100)
    else:
        link.drop("server", "dst", SERVER, 100)
    services.add(9001)
    for _ in range(2):
        report = app.engine.cycle()
        assert isinstance(report.error, ConsulUnreachable), report.error
        assert report.writes == 0
    assert app.pool.wait_idle(20)
    assert all(server.cooling(app.pool.clock()) for server in app.pool.servers)
    link.heal()
    healed = app.engine.cycle()
    assert healed.error is None, healed.error
    assert healed.writes_by_kind == {"register": 1}
    assert set(node_services(remote_cluster)) == {"svc9000-9000", "svc9001-9001"}


def test_two_to_five_seconds_of_latency_still_syncs(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """Every server's answers delayed by 2, 3.5 and 5 s (the home server the slowest), under
    regagent's default timeouts: the cycles complete through the faster servers."""
    proxies = [
        DelayingProxy(consul_cluster.host_port(i), delay) for i, delay in enumerate((5, 2, 3.5))
    ]
    try:
        services = Services()
        services.add(9000)
        path = write_config(
            tmp_path,
            consul_cluster,
            [],
            consul={
                "servers": [proxy.address for proxy in proxies],
                "connect_timeout": "2s",
                "read_timeout": "10s",
            },
        )
        app = build(load_config(str(path)), intent_source=services)
        first = app.engine.cycle()
        assert first.error is None, first.error
        assert first.writes_by_kind == {"register": 1}
        services.add(9001)
        second = app.engine.cycle()
        assert second.error is None, second.error
        assert second.writes_by_kind == {"register": 1}
        assert set(node_services(consul_cluster)) == {"svc9000-9000", "svc9001-9001"}
        assert app.pool.wait_idle(20)
    finally:
        for proxy in proxies:
            proxy.close()


def test_the_drop_program_passes_what_it_does_not_match(link: Link) -> None:
    """A drop of 100 % of the packets from another address leaves this link alone: the
    filter matches the address (a last octet above 127 included), not everything."""
    link.drop("client", "src", "10.99.0.200", 100)
    with entered(link.server_ns), socket.socket() as listener:
        listener.bind((SERVER, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with entered(link.client_ns), socket.create_connection((SERVER, port), timeout=5):
            pass  # connected: the SYN-ACK from SERVER was not dropped
