"""Sync-cycle costs against the three-server emulator, measured side by side in one run.

Prints: requests and writes per steady-state cycle (goal: 0 writes, <= 2 reads); the extra time
a cycle pays with its home server stopped and black-holed (first cycle and later ones); the time
to register 50 services from an empty catalog (one /v1/txn write). Fleet-wide figures are in
bench/fleet.py.

    python3 bench/sync.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from consulsim import SimCluster
from regagent.app import App, build
from regagent.config import load_config
from regagent.engine import SyncEngine
from regagent.logs import configure_logging
from regagent.model import ServiceIntent, ServiceRegistration

READ_TIMEOUT = 1.0
CYCLES = 15
_engines = 0


def make_app(cluster: SimCluster, workdir: Path, services: int) -> App:
    """A fresh app (fresh pool) for its own node, so scenarios do not disturb each other."""
    global _engines
    _engines += 1
    path = workdir / f"regagent-{_engines}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "consul": {
                    "servers": cluster.addresses,
                    "connect_timeout": "1s",
                    "read_timeout": f"{READ_TIMEOUT}s",
                    "cooldown_initial": "60s",
                    "cooldown_max": "120s",
                },
                "node": {"name": f"bench-host-{_engines}", "address": "127.0.0.1"},
                "discovery": {"enabled": False},
                "sync": {"state_dir": str(workdir)},
            }
        )
    )
    config = load_config(str(path))
    intents = [
        ServiceIntent(
            ServiceRegistration(f"svc{i}-{9000 + i}", f"svc{i}", 9000 + i, "127.0.0.1", ("bench",)),
            "static",
        )
        for i in range(services)
    ]
    return build(config, intent_source=lambda *_: intents)


def make_engine(cluster: SimCluster, workdir: Path, services: int) -> SyncEngine:
    return make_app(cluster, workdir, services).engine


def timed(engine: SyncEngine) -> float:
    started = time.perf_counter()
    result = engine.cycle()
    if result.error is not None:
        raise SystemExit(f"cycle failed: {result.error}")
    return time.perf_counter() - started


def median_ms(samples: List[float]) -> float:
    return statistics.median(samples) * 1000


def cycles(engine: SyncEngine, n: int) -> List[float]:
    return [timed(engine) for _ in range(n)]


def scenario(
    cluster: SimCluster,
    workdir: Path,
    fault: Callable[[int], None],
    heal: Callable[[int], None],
) -> tuple[float, float]:
    """(first faulted cycle, median of later ones) in ms, for an engine already in sync.

    The warm-up cycle registers the services and settles the pool on its home server, so the first
    faulted cycle pays only the failover itself. Later cycles are timed once the cluster has a
    leader again (stopping the leader forces an election; cycles in between also ask the other
    servers whether they know a leader).
    """
    app = make_app(cluster, workdir, 10)
    engine = app.engine
    timed(engine)
    home = app.pool.home  # each host starts at a server chosen by its node name: fault that one
    fault(home)
    try:
        first = timed(engine)
        cluster.wait_for_leader()
        later = cycles(engine, CYCLES)
    finally:
        heal(home)
    return first * 1000, median_ms(later)


def main() -> None:
    configure_logging("error")
    cluster = SimCluster(servers=3, election_delay="0.2s", rpc_hold="0.2s")
    with cluster, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        leader_at_start = cluster.wait_for_leader()
        engine = make_engine(cluster, workdir, 50)
        cluster.reset_stats()
        started = time.perf_counter()
        timed(engine)
        register_50 = time.perf_counter() - started
        initial_writes = cluster.stats()["writes_applied"]

        cluster.reset_stats()
        cycles(engine, CYCLES)
        stats = cluster.stats()
        per_cycle_requests = stats["requests"] / CYCLES
        per_cycle_writes = stats["writes_applied"] / CYCLES

        base_engine = make_engine(cluster, workdir, 10)
        timed(base_engine)
        baseline = median_ms(cycles(base_engine, CYCLES))

        stopped_first, stopped_later = scenario(
            cluster, workdir, cluster.stop_server, cluster.start_server
        )
        cluster.wait_for_leader()
        holed_first, holed_later = scenario(
            cluster, workdir, cluster.blackhole, lambda i: cluster.blackhole(i, False)
        )

    print(
        "regagent sync benchmark (three-server emulator on loopback; "
        f"leader at start: server {leader_at_start + 1})"
    )
    print(
        f"  register 50 services from empty: {register_50 * 1000:8.1f} ms ({initial_writes} writes)"
    )
    print(
        f"  steady state, per cycle: {per_cycle_requests:.2f} requests, "
        f"{per_cycle_writes:.2f} writes   (goal: <= 2 reads, 0 writes)"
    )
    print(f"  baseline cycle (10 services, all servers up): {baseline:8.2f} ms")
    print(
        f"  home server stopped:     first cycle {stopped_first:8.2f} ms "
        f"(+{stopped_first - baseline:.2f}), later {stopped_later:8.2f} ms "
        f"(x{stopped_later / baseline:.2f} of baseline)"
    )
    print(
        f"  home server black-holed: first cycle {holed_first:8.2f} ms "
        f"(+{holed_first - baseline:.2f}; read timeout {READ_TIMEOUT * 1000:.0f} ms, "
        "reads hedged), "
        f"later {holed_later:8.2f} ms (x{holed_later / baseline:.2f} of baseline)"
    )


if __name__ == "__main__":
    main()
