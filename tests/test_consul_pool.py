"""The pool's choice of server, pinned on a fake clock and rng: the home server from the node
name (a fleet spreads), latency demotion with hysteresis, 429 Retry-After, the first-sync jitter,
the early try once per cycle when every server is cooling down; hedged reads against a black-holed
emulator server and a full outage of the emulator healed (real sockets, no timing assertions)."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Dict, List

import pytest

from consulsim import SimCluster
from helpers.consul import NODE, write_config
from helpers.fakes import FakeClock
from regagent.config import load_config
from regagent.config.model import ConsulConfig
from regagent.consul.answers import ServerBusy
from regagent.consul.catalog import read_actual
from regagent.consul.pool import ServerPool
from regagent.consul.retry import (
    FIRST_SYNC_JITTER_MAX,
    RetryPolicy,
    first_sync_delay,
    server_order,
    start_index,
)
from regagent.errors import ConsulUnreachable
from regagent.model import ServiceIntent, ServiceRegistration

MIDDLE = 0.5
SERVERS = ("a:1", "b:1", "c:1")


class Timed:
    """A client whose requests take `latency` seconds of the fake clock."""

    def __init__(self, address: str, clock: FakeClock, latency: Dict[str, float]) -> None:
        self.address = address
        self.clock = clock
        self.latency = latency


def timed_call(client: Timed) -> str:
    client.clock.now += client.latency[client.address]
    return client.address


def pool_of(latency: Dict[str, float], clock: FakeClock, node: str = "") -> ServerPool:
    config = ConsulConfig(servers=SERVERS, cooldown_initial=5.0, cooldown_max=300.0)
    pool = ServerPool(
        config,
        clock=clock,
        client_factory=lambda address, *_: Timed(address, clock, latency),
        rng=lambda: MIDDLE,
    )
    if node:
        pool.place(node)
    return pool


# --- spread --------------------------------------------------------------------------------------


def test_start_server_is_stable_per_node_name() -> None:
    # The sync tests rely on it: NODE starts at server 1 and fails over to 2, then 3.
    assert server_order(NODE, 3) == [0, 1, 2]
    assert start_index(NODE, 3) == 0
    assert start_index("bench-host-1", 3) == 2
    assert start_index("anything", 1) == 0


def test_many_node_names_spread_near_uniformly_over_the_servers() -> None:
    for servers in (3, 5):
        names = [f"host-{i:05d}.dc1.example" for i in range(6000)]
        counts = collections.Counter(start_index(name, servers) for name in names)
        fair = len(names) / servers
        assert set(counts) == set(range(servers))
        assert max(counts.values()) < 1.1 * fair and min(counts.values()) > 0.9 * fair


def test_the_hosts_of_a_lost_server_spread_over_the_others() -> None:
    names = [f"host-{i:05d}" for i in range(6000)]
    orders = [server_order(name, 3) for name in names]
    assert all(sorted(order) == [0, 1, 2] for order in orders)
    second = collections.Counter(order[1] for order in orders if order[0] == 0)
    assert set(second) == {1, 2}
    assert abs(second[1] - second[2]) < 0.15 * sum(second.values())


def test_the_pool_starts_at_the_home_server_and_a_reload_keeps_the_server_in_use() -> None:
    clock = FakeClock()
    latency = dict.fromkeys(SERVERS, 0.01)
    name = next(f"h{i}" for i in range(100) if start_index(f"h{i}", 3) == 2)
    pool = pool_of(latency, clock, name)
    assert pool.call("read", timed_call) == "c:1"
    pool.current = 1
    reloaded = pool_of(latency, clock)
    reloaded.adopt(pool)
    reloaded.place(name)
    assert reloaded.current == 1


def test_a_host_goes_back_home_once_the_home_server_has_cooled_down() -> None:
    clock = FakeClock()
    latency = dict.fromkeys(SERVERS, 0.01)
    pool = pool_of(latency, clock, NODE)  # home: a:1
    failing = {"a:1"}

    def call(client: Timed) -> str:
        if client.address in failing:
            raise ServerBusy("rate limited (429 Too Many Requests)")
        return timed_call(client)

    assert pool.call("read", call) == "b:1"
    assert pool.call("read", call) == "b:1"  # a:1 cools down for 5 s
    failing.clear()
    clock.now += 6
    assert pool.call("read", call) == "a:1"


# --- 429 / 503 -----------------------------------------------------------------------------------


def test_busy_cooldown_honours_retry_after_up_to_cooldown_max() -> None:
    policy = RetryPolicy(cooldown_initial=5.0, cooldown_max=300.0)
    assert policy.busy_cooldown(1, None, lambda: MIDDLE) == 5.0
    assert policy.busy_cooldown(1, 60.0, lambda: MIDDLE) == 60.0
    assert policy.busy_cooldown(1, 86400.0, lambda: MIDDLE) == 300.0  # a hostile header
    assert policy.busy_cooldown(4, 1.0, lambda: MIDDLE) == 40.0


# --- latency demotion ----------------------------------------------------------------------------


def test_a_server_far_slower_than_its_peers_is_demoted_without_flapping() -> None:
    clock = FakeClock()
    latency = {"a:1": 5.0, "b:1": 0.01, "c:1": 0.01}
    pool = pool_of(latency, clock, NODE)  # home: the slow one
    answered = [pool.call("read", timed_call) for _ in range(200)]
    # three answers to measure it, then asked last for cooldown_max (300 s, no jitter here)
    assert answered[:3] == ["a:1"] * 3
    assert set(answered[3:]) == {"b:1"}
    # Once the demotion is over it is measured afresh (three answers), and demoted again.
    clock.now = pool.servers[0].slow_until + 1
    again = [pool.call("read", timed_call) for _ in range(50)]
    assert again[:3] == ["a:1"] * 3 and set(again[3:]) == {"b:1"}


def test_a_server_slower_but_not_markedly_so_keeps_its_place() -> None:
    clock = FakeClock()
    # Below the absolute floor (0.5 s), or less than 4x a peer: no demotion either way.
    for slow, fast in ((0.4, 0.001), (0.9, 0.3)):
        latency = {"a:1": slow, "b:1": fast, "c:1": fast}
        pool = pool_of(latency, clock, NODE)
        pool.servers[1].latency, pool.servers[1].samples = fast, 5
        pool.servers[2].latency, pool.servers[2].samples = fast, 5
        assert {pool.call("read", timed_call) for _ in range(50)} == {"a:1"}


def test_latency_policy_numbers() -> None:
    policy = RetryPolicy()
    assert policy.latency_estimate(None, 2.0) == 2.0
    assert policy.latency_estimate(1.0, 2.0) == pytest.approx(1.3)
    assert not policy.is_slow(5.0, 2, [0.01])  # too few answers
    assert not policy.is_slow(0.4, 9, [0.001])  # fast enough in absolute terms
    assert not policy.is_slow(1.0, 9, [0.3])  # not 4x slower than a peer
    assert policy.is_slow(1.2, 9, [0.3])
    assert policy.is_slow(1.0, 9, [None])  # an unmeasured peer is worth a try
    assert not policy.is_slow(9.0, 9, [])  # nobody to give way to
    assert policy.hedge_delay(None) == 0.3
    assert policy.hedge_delay(0.01) == 0.3
    assert policy.hedge_delay(0.2) == pytest.approx(0.8)
    assert policy.hedge_delay(5.0) == 1.0


# --- first sync jitter ---------------------------------------------------------------------------


def test_first_sync_waits_a_random_part_of_the_jitter_capped_for_fast_registration() -> None:
    assert first_sync_delay(5.0, lambda: 0.0) == 0.0
    assert first_sync_delay(5.0, lambda: 0.5) == 2.5
    assert first_sync_delay(2.0, lambda: 0.5) == 1.0
    assert first_sync_delay(60.0, lambda: 0.999) == pytest.approx(FIRST_SYNC_JITTER_MAX, 0.01)
    assert first_sync_delay(0.0, lambda: 0.7) == 0.0


def test_hosts_failing_together_retry_apart() -> None:
    """After an outage, each host's next try of a server is its own jittered cool-down."""
    policy = RetryPolicy(cooldown_initial=5.0, cooldown_max=300.0)
    readings = [i / 100 for i in range(100)]
    retries = {round(policy.cooldown(3, lambda r=r: r), 3) for r in readings}  # type: ignore[misc]
    assert len(retries) == 100 and max(retries) - min(retries) > 0.35 * 20


# --- hedged reads, for real ----------------------------------------------------------------------


def test_a_hedged_read_under_a_black_holed_first_server_is_answered_by_another(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = load_config(
        str(write_config(tmp_path, consul_cluster, [], consul={"read_timeout": "1s"}))
    )
    pool = ServerPool(config.consul)
    pool.place(NODE)  # home: server 1
    consul_cluster.blackhole(0)
    actual = read_actual(pool, NODE)  # two reads
    assert actual.node is None
    assert pool.current_server.address != consul_cluster.addresses[0]
    assert pool.servers[0].requests == 1  # the second read went straight to the other
    assert sum(s.requests for s in pool.servers) == 3
    assert pool.wait_idle(20)
    assert pool.servers[0].last_error == "no answer (read timed out)"
    assert pool.servers[0].cooling(pool.clock())


def test_writes_are_never_hedged(consul_cluster: SimCluster, tmp_path: Path) -> None:
    config = load_config(
        str(write_config(tmp_path, consul_cluster, [], consul={"read_timeout": "1s"}))
    )
    pool = ServerPool(config.consul)
    pool.place(NODE)
    consul_cluster.blackhole(0)
    seen: List[str] = []

    def write(client: Any) -> None:
        seen.append(client.http.host + ":" + str(client.http.port))
        client.http.put(lambda r: r, "/v1/catalog/register", data="{}")

    pool.call("write", write)  # times out on server 1, then goes to server 2: one at a time
    assert seen == consul_cluster.addresses[:2]


def test_a_oneshot_sync_with_a_black_holed_first_server_succeeds_through_another(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    from helpers.consul import regagent, static

    config = write_config(
        tmp_path, consul_cluster, [static("queue", 9000)], consul={"read_timeout": "10s"}
    )
    consul_cluster.blackhole(0)
    consul_cluster.reset_stats()
    result = regagent(config, "sync")
    assert result.returncode == 0, result.stderr
    assert consul_cluster.addresses[0] not in result.stdout.split("via")[-1]
    servers = consul_cluster.stats()["servers"]
    assert servers[0]["requests"] <= 1  # the hedged first read, never answered
    assert servers[1]["endpoints"].get("PUT /v1/txn") == 1


def test_a_slow_home_server_is_demoted_against_the_emulator(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """The emulator's slow fault (0.8 s per answer, below the 1 s read timeout): its answers
    still arrive (as hedged reads' late answers), feed its estimate, and get it demoted."""
    from helpers.consul import app_with

    app = app_with(write_config(tmp_path, consul_cluster, []), [])
    consul_cluster.slow(0, 0.8)
    home = app.pool.servers[0]
    for _ in range(8):
        assert app.engine.cycle().error is None
        assert app.pool.wait_idle(10)
        if home.slow_until:
            break
    assert home.slow_until > app.pool.clock()  # demoted
    asked = home.requests
    for _ in range(3):
        report = app.engine.cycle()
        assert report.error is None and report.server != consul_cluster.addresses[0]
    assert home.requests == asked  # asked last: not at all while the others answer


# --- after a full outage -------------------------------------------------------------------------


def test_with_every_server_cooling_down_a_cycle_still_asks_the_one_that_cools_first() -> None:
    clock = FakeClock()
    asked: List[str] = []
    dead = set(SERVERS)

    def call(client: Timed) -> str:
        asked.append(client.address)
        if client.address in dead:
            raise ServerBusy("unavailable (503 Service Unavailable)")
        return client.address

    readings = iter([0.9, 0.1, 0.5] + [MIDDLE] * 20)  # a:1 6 s, b:1 4 s, c:1 5 s
    config = ConsulConfig(servers=SERVERS, cooldown_initial=5.0, cooldown_max=300.0)
    pool = ServerPool(
        config,
        clock=clock,
        client_factory=lambda address, *_: Timed(address, clock, {}),
        rng=lambda: next(readings),
    )
    pool.place(NODE)
    pool.new_cycle()
    with pytest.raises(ConsulUnreachable):
        pool.call("read", call)  # the outage: every server fails once and cools down
    assert asked == ["a:1", "b:1", "c:1"]
    clock.now += 1
    asked.clear()
    pool.new_cycle()
    with pytest.raises(ConsulUnreachable, match="b:1: unavailable"):
        pool.call("read", call)  # every server cooling down: the one that cools first is asked
    assert asked == ["b:1"]
    with pytest.raises(ConsulUnreachable, match="cooling down"):
        pool.call("read", call)
    assert asked == ["b:1"]  # once per cycle
    pool.new_cycle()
    with pytest.raises(ConsulUnreachable, match="c:1: unavailable"):
        pool.call("read", call)
    assert asked == ["b:1", "c:1"]  # b:1 cools longer now: c:1 ends first
    dead.clear()  # the heal
    pool.new_cycle()
    assert pool.call("read", call) == "a:1"
    assert pool.call("read", call) == "a:1"  # a:1 answered: it is usable again, and home
    assert not pool.servers[0].cooling(clock.now)


def test_without_early_tries_every_server_cooling_down_is_waited_out() -> None:
    """The policy's knob, at 0: what the pool did before (bench/heal.py measures both)."""
    clock = FakeClock()
    config = ConsulConfig(servers=SERVERS[:1], cooldown_initial=5.0, cooldown_max=300.0)
    pool = ServerPool(
        config,
        clock=clock,
        client_factory=lambda address, *_: Timed(address, clock, {}),
        policy=RetryPolicy(early_tries_per_cycle=0),
        rng=lambda: MIDDLE,
    )
    calls: List[str] = []

    def dead(client: Timed) -> str:
        calls.append(client.address)
        raise ServerBusy("unavailable (503 Service Unavailable)")

    pool.new_cycle()
    with pytest.raises(ConsulUnreachable):
        pool.call("read", dead)
    pool.new_cycle()
    with pytest.raises(ConsulUnreachable, match="cooling down"):
        pool.call("read", dead)
    assert calls == ["a:1"]


def test_a_cycle_after_every_server_was_down_and_healed_writes_at_once(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """Every emulator server stopped, then started again: the first cycle after the heal
    reads and writes, although every server's cool-down (60 s and more) is far from over."""
    from helpers.consul import app_with, node_services
    from regagent.app import GivenIntents

    config = write_config(
        tmp_path, consul_cluster, [], consul={"cooldown_initial": "60s", "cooldown_max": "5m"}
    )
    queue = ServiceRegistration("queue-9000", "queue", 9000, "127.0.0.1")
    app = app_with(config, [queue])
    assert app.engine.cycle().error is None
    for i in range(3):
        consul_cluster.stop_server(i)
    failed = app.engine.cycle()
    assert isinstance(failed.error, ConsulUnreachable)
    assert all(s.cooling(app.pool.clock()) for s in app.pool.servers)
    again = app.engine.cycle()  # still down: one early try, refused, and the cycle ends
    assert isinstance(again.error, ConsulUnreachable)
    for i in range(3):
        consul_cluster.start_server(i)
    consul_cluster.wait_for_leader()
    app.engine.source = GivenIntents(
        lambda *_: [
            ServiceIntent(queue, "static"),
            ServiceIntent(ServiceRegistration("cache-6379", "cache", 6379, "127.0.0.1"), "static"),
        ]
    )
    healed = app.engine.cycle()
    assert healed.error is None, healed.error
    assert healed.writes_by_kind == {"register": 1}
    assert set(node_services(consul_cluster)) == {"queue-9000", "cache-6379"}


def test_a_blocking_query_held_for_minutes_is_no_slowness_and_no_observed_request() -> None:
    """The node watch's polls (`blocking=True`) are held by the server for the whole wait: that
    is no latency of the server's, and the observer (the loop's heartbeat, the request
    histogram) hears only of failures."""
    clock = FakeClock()
    latency = {"a:1": 300.0, "b:1": 0.01, "c:1": 0.01}  # each poll held 5 minutes
    pool = pool_of(latency, clock, NODE)
    heard: List[str] = []
    pool.observer = lambda server, outcome, seconds: heard.append(str(outcome))
    home = pool.current_server.address
    latency[home] = 300.0
    answered = [pool.call("watch node", timed_call, blocking=True) for _ in range(10)]
    assert set(answered) == {home}, "still its home server: not demoted as slow"
    assert pool.current_server.latency is None and heard == []
    # A read that took as long is a slow server's: measured, and heard.
    pool.call("read", timed_call)
    assert pool.current_server.latency is not None and len(heard) == 1
