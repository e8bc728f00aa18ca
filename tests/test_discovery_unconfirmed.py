"""Unconfirmed listeners are identified in the background: bounded, remembered, fair.

Before: every candidate was probed inside every cycle and every watch pass; a socket that
accepts and never answers held a probe for the whole probe_timeout, and a few hundred of them,
opened by any local user in `discovery.port_ranges`, took every cycle past its deadline before
it wrote anything (a dead exporter stayed passing, a new one was never registered). The unit
tests drive `UnconfirmedProbes` with a prober that answers on command; the last test plays the
hostile party for real: hundreds of silent sockets beside a real `regagent run`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Set

from consulsim import SimCluster
from helpers.cli import events
from helpers.consul import OTHER_SERVER, running_daemon, write_config
from helpers.discovery import exporter, kill
from helpers.fakes import FakeClock
from regagent.app import build
from regagent.config import load_config
from regagent.config.model import DiscoveryConfig
from regagent.discovery.exporters import load_exporter_table
from regagent.discovery.identify import (
    CANDIDATE,
    IDENTIFIED,
    NOT_EXPORTER,
    PENDING,
    Finding,
    identify,
)
from regagent.discovery.listeners import Listener
from regagent.discovery.probe import Exposition, ProbeResult
from regagent.discovery.unconfirmed import RETRY_MAX, UnconfirmedProbes, retry_delay
from regagent.identity import Writer

SETTINGS = DiscoveryConfig(port_ranges=((20000, 20999),))
TABLE = load_exporter_table()


def candidate(port: int, inode: Optional[int] = None) -> Finding:
    listener = Listener("0.0.0.0", port, socket.AF_INET, inode or 500_000 + port)
    return Finding(
        port, (listener,), None, "wildcard", "", "127.0.0.1", outcome=CANDIDATE, in_port_range=True
    )


def identify_with_settings(finding: Finding, prober: Callable[..., ProbeResult]) -> Finding:
    return identify(finding, SETTINGS, TABLE, prober)


class Prober:
    """Answers per port: node_exporter metrics for `serving`, a timeout for the rest; holds each
    call until `gate` lets it through (when a gate is set)."""

    def __init__(self, serving: Set[int], gate: Optional[threading.Semaphore] = None) -> None:
        self.serving = serving
        self.gate = gate
        self.calls: List[int] = []
        self.lock = threading.Lock()

    def __call__(
        self, address: str, port: int, path: str, timeout: float, limit: int
    ) -> ProbeResult:
        with self.lock:
            self.calls.append(port)
        if self.gate is not None:
            assert self.gate.acquire(timeout=30)
        url = f"http://{address}:{port}{path}"
        if port not in self.serving:
            return ProbeResult(url, "http", False, f"timed out after {timeout:g}s")
        names = frozenset({"node_exporter_build_info", "node_load1"})
        build = {"node_exporter_build_info": {"version": "1.5.0"}}
        return ProbeResult(
            url, "http", True, "", 200, Exposition(True, names=names, build_info=build)
        )

    def count(self, port: int) -> int:
        with self.lock:
            return self.calls.count(port)


@contextlib.contextmanager
def probes(prober: Prober, **options: object) -> Iterator[UnconfirmedProbes]:
    background = UnconfirmedProbes(prober, **options)  # type: ignore[arg-type]
    try:
        yield background
    finally:
        background.close()
        if prober.gate is not None:
            for _ in range(100):
                prober.gate.release()


def settle(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Polls until `condition` holds (the workers are real threads); a bound, not a timing."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def pass_over(background: UnconfirmedProbes, found: List[Finding]) -> Dict[int, Finding]:
    """What one pass does: offer the candidates, collect what is ready."""
    background.offer(found, identify_with_settings, 2.0, 4096)
    return {f.port: f for f in background.collect(found, 2.0, 4096)}


def test_a_pass_in_the_daemon_never_waits_for_a_probe() -> None:
    gate = threading.Semaphore(0)
    prober = Prober({20001}, gate)
    with probes(prober, settle=0.0) as background:
        found = [candidate(20000), candidate(20001)]
        first = pass_over(background, found)
        assert {f.outcome for f in first.values()} == {PENDING}  # the probes are still held
        assert "probed in the background" in first[20000].reason
        settle(lambda: len(prober.calls) == 2, "both probes to start")
        assert background.next_check() is not None  # a new socket's first probe runs: look again
        gate.release(2)
        settle(
            lambda: (
                background.next_check() is not None and background.next_check() <= time.monotonic()
            ),
            "news",
        )
        later = pass_over(background, found)
        assert later[20001].outcome == IDENTIFIED and later[20001].exporter == "node_exporter"
        assert later[20000].outcome == NOT_EXPORTER and "timed out" in later[20000].reason
        assert background.used_ports() == {20001}  # the news was taken, once
        assert background.used_ports() == set()


def test_a_one_shot_waits_a_bounded_time_then_reports_the_rest_pending() -> None:
    gate = threading.Semaphore(0)
    prober = Prober({20001}, gate)
    gate.release(1)  # one probe answers, the other never does within the wait
    with probes(prober, workers=1) as background:
        found = [candidate(20001), candidate(20000)]
        background.offer(found, identify_with_settings, 0.2, 4096)
        done = {f.port: f for f in background.collect(found, 0.2, 4096)}  # waits <= 2 x 0.2 + 1 s
    assert done[20001].outcome == IDENTIFIED
    assert done[20000].outcome == PENDING


def test_each_socket_is_remembered_an_exporter_once_a_failure_with_backoff() -> None:
    clock = FakeClock()
    prober = Prober({20001})
    with probes(prober, settle=0.0, clock=clock) as background:
        found = [candidate(20000), candidate(20001)]
        pass_over(background, found)
        settle(lambda: prober.count(20000) == 1 and prober.count(20001) == 1, "first probes")
        settle(lambda: pass_over(background, found)[20000].outcome == NOT_EXPORTER, "result")
        for _ in range(5):  # passes and no time: nothing is probed again
            pass_over(background, found)
        time.sleep(0.2)
        assert (prober.count(20000), prober.count(20001)) == (1, 1)

        clock.now += retry_delay(1)  # the failed one is due again; the exporter never is
        pass_over(background, found)
        settle(lambda: prober.count(20000) == 2, "the retry")
        clock.now += retry_delay(2) - 0.01  # not yet: the delay doubled
        pass_over(background, found)
        time.sleep(0.2)
        assert (prober.count(20000), prober.count(20001)) == (2, 1)

        restarted = [candidate(20000, inode=777), candidate(20001, inode=778)]  # new sockets
        pass_over(background, restarted)
        settle(lambda: prober.count(20000) == 3 and prober.count(20001) == 2, "new sockets")
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay(30) == RETRY_MAX


def test_probe_starts_are_budgeted() -> None:
    clock = FakeClock()
    prober = Prober(set())
    with probes(prober, settle=0.0, clock=clock, rate=2.0, burst=3) as background:
        found = [candidate(20000 + i) for i in range(10)]
        pass_over(background, found)
        settle(lambda: len(prober.calls) == 3, "the burst")
        time.sleep(0.3)
        assert len(prober.calls) == 3  # no time passed: no more tokens
        clock.now += 1.0  # two more tokens
        pass_over(background, found)
        settle(lambda: len(prober.calls) == 5, "two more")
        time.sleep(0.3)
        assert len(prober.calls) == 5


def test_a_new_exporter_is_not_queued_behind_a_burst_of_silent_sockets() -> None:
    clock = FakeClock()
    gate = threading.Semaphore(0)
    prober = Prober({20500}, gate)
    with probes(prober, settle=0.0, clock=clock, workers=1, burst=1000) as background:
        silent = [candidate(20000 + i) for i in range(50)]
        pass_over(background, silent)
        settle(lambda: len(prober.calls) == 1, "the first silent probe")
        clock.now += 1.0
        with_new = [*silent, candidate(20500)]
        pass_over(background, with_new)
        for _ in range(3):  # one worker, each probe let through in turn
            gate.release()
        settle(lambda: len(prober.calls) >= 3, "two more probes")
        assert 20500 in prober.calls[1:3]  # among the next two picks, not after 49 silent ones
        # ... and the oldest waiting are not starved by new sockets either.
        assert prober.calls[1:3].count(20500) == 1 and min(prober.calls[1:3]) == 20000


# -- a longer look for slow listeners (issue 24) ---------------------------------------------------


class SlowProber:
    """Answers node_exporter metrics on a port only when the probe's timeout is at least the
    port's `answers_in` seconds, a timeout otherwise (no port: never answers); records each
    call's (port, timeout); holds calls of ports in `held` until `gate` lets them through."""

    def __init__(self, answers_in: Dict[int, float], held: Set[int] = frozenset()) -> None:
        self.answers_in = answers_in
        self.held = held
        self.gate = threading.Semaphore(0)
        self.calls: List[tuple[int, float]] = []
        self.lock = threading.Lock()

    def __call__(
        self, address: str, port: int, path: str, timeout: float, limit: int
    ) -> ProbeResult:
        with self.lock:
            self.calls.append((port, timeout))
        if port in self.held:
            assert self.gate.acquire(timeout=30)
        url = f"http://{address}:{port}{path}"
        if timeout < self.answers_in.get(port, float("inf")):
            return ProbeResult(url, "http", False, f"timed out after {timeout:g}s", timed_out=True)
        names = frozenset({"node_exporter_build_info"})
        build = {"node_exporter_build_info": {"version": "1.5.0"}}
        exposition = Exposition(True, names=names, build_info=build, samples=1)
        return ProbeResult(url, "http", True, "", 200, exposition)

    def timeouts(self, port: int) -> List[float]:
        with self.lock:
            return [timeout for called, timeout in self.calls if called == port]


def offer_slow(background: UnconfirmedProbes, found: List[Finding]) -> Dict[int, Finding]:
    background.offer(found, identify_with_settings, 2.0, 4096, slow_timeout=10.0)
    return {f.port: f for f in background.collect(found, 2.0, 4096)}


def test_a_listener_that_times_out_gets_one_longer_look_at_once() -> None:
    clock = FakeClock()
    prober = SlowProber({20001: 6.0})  # 20001 answers in 6 s; 20000 never does
    with probes(prober, settle=0.0, clock=clock) as background:  # type: ignore[arg-type]
        found = [candidate(20000), candidate(20001)]
        offer_slow(background, found)
        settle(lambda: len(prober.timeouts(20001)) == 2, "the first probe, then the longer look")
        assert prober.timeouts(20001) == [2.0, 10.0]  # no backoff before the longer look
        settle(lambda: offer_slow(background, found)[20001].outcome == IDENTIFIED, "identified")
        assert offer_slow(background, found)[20001].version == "1.5.0"
        settle(lambda: len(prober.timeouts(20000)) == 2, "the silent one's longer look")
        assert offer_slow(background, found)[20000].outcome == NOT_EXPORTER
        clock.now += retry_delay(2)  # its retries are longer looks too, after the backoff
        offer_slow(background, found)
        settle(lambda: len(prober.timeouts(20000)) == 3, "the retry")
        assert prober.timeouts(20000) == [2.0, 10.0, 10.0]
        assert prober.timeouts(20001) == [2.0, 10.0]  # identified: never probed again


def test_longer_looks_never_hold_every_worker() -> None:
    # Two workers, one of them at most on a longer look: while a slow socket's longer look
    # runs (held), a new socket's first probe still gets the other worker.
    prober = SlowProber({20002: 0.0}, held={20000})
    with probes(prober, settle=0.0, workers=2, slow_workers=1) as background:  # type: ignore[arg-type]
        offer_slow(background, [candidate(20000)])
        prober.gate.release()  # its first probe times out; its longer look is then held
        settle(lambda: prober.timeouts(20000) == [2.0, 10.0], "the held longer look")
        offer_slow(background, [candidate(20000), candidate(20001)])  # another slow one
        settle(lambda: prober.timeouts(20001) == [2.0], "the second one's first probe")
        time.sleep(0.2)
        assert prober.timeouts(20001) == [2.0]  # its longer look waits for the slot
        found = [candidate(20000), candidate(20001), candidate(20002)]
        offer_slow(background, found)  # a new exporter among them
        settle(lambda: offer_slow(background, found)[20002].outcome == IDENTIFIED, "new one")
        prober.gate.release()
        settle(lambda: prober.timeouts(20001) == [2.0, 10.0], "the slot, once free")


def test_a_one_shot_waits_for_the_longer_look() -> None:
    prober = SlowProber({20001: 0.5})
    with probes(prober) as background:  # type: ignore[arg-type]
        background.offer([candidate(20001)], identify_with_settings, 0.2, 4096, slow_timeout=1.0)
        (found,) = background.collect([candidate(20001)], 0.2, 4096)
    assert (found.outcome, found.exporter) == (IDENTIFIED, "node_exporter")
    assert prober.timeouts(20001) == [0.2, 1.0]


# -- for real: hundreds of silent sockets beside a running daemon --------------------------------


def free_range(count: int) -> List[int]:
    """`count` consecutive free ports below the kernel's ephemeral range: a port inside it may be
    taken by any outgoing connection (the daemon's own) between the check and the bind."""
    import random

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        base = random.randint(10000, low - count)
        if all(_free(base + i) for i in range(count)):
            return [base + i for i in range(count)]
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def silent_sockets(ports: List[int]) -> Iterator[None]:
    """Listening sockets that never accept: each probe of one lasts its whole timeout."""
    opened = []
    try:
        for port in ports:
            sock = socket.socket()
            sock.bind(("0.0.0.0", port))
            sock.listen(4)
            opened.append(sock)
        yield
    finally:
        for sock in opened:
            sock.close()


def status_of(cluster: SimCluster, node: str, sid: str) -> Optional[str]:
    checks = cluster.get(OTHER_SERVER, f"/v1/health/node/{node}?stale") or []
    found = [c["Status"] for c in checks if c["CheckID"] == f"service:{sid}"]
    return found[0] if found else None


def test_hundreds_of_silent_listeners_neither_stall_the_cycle_nor_hide_a_new_or_dead_exporter(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    ports = free_range(302)
    dead_port, new_port, silent = (
        ports[100],
        ports[200],
        [p for p in ports if p not in (ports[100], ports[200])],
    )
    binaries = sorted({b for spec in TABLE.by_name.values() for b in spec.binaries})
    config = write_config(
        tmp_path,
        consul_cluster,
        [],
        node={"name": "silent-host", "address": "127.0.0.1"},
        sync={"interval": "2s", "jitter": "100ms", "state_dir": str(tmp_path / "state")},
        discovery={
            "enabled": True,
            "port_ranges": [f"{ports[0]}-{ports[-1]}"],
            "exclude_ports": sorted(set(TABLE.by_port) - set(ports)),
            "exclude_processes": binaries,
        },
    )
    dead_sid, new_sid = f"node-exporter-{dead_port}", f"node-exporter-{new_port}"
    with running_daemon(config) as daemon, exporter("serve", str(dead_port)) as dead:
        settle(lambda: status_of(consul_cluster, "silent-host", dead_sid) == "passing", "D", 30)
        time.sleep(5.5)  # past the watch's hold-off for D
        with silent_sockets(silent):
            time.sleep(2)  # the silent sockets are being probed (2 s each, 8 at a time)
            kill(dead)
            with exporter("serve", str(new_port)):
                # Bounds, not timings: probed inside the passes, 300 silent sockets took every
                # pass and cycle 75 s (300 x 2 s / 8) before anything was written.
                settle(
                    lambda: status_of(consul_cluster, "silent-host", dead_sid) == "critical",
                    "D critical",
                    20,
                )
                settle(
                    lambda: status_of(consul_cluster, "silent-host", new_sid) == "passing",
                    "N passing",
                    20,
                )
                time.sleep(4)  # two more full cycles with every silent socket still there
    assert daemon.returncode == 0, daemon.stderr_text
    assert "CycleDeadline" not in daemon.stderr_text and "took over" not in daemon.stderr_text
    assert events(daemon.stderr_text, "watch_pass_crashed") == []


def test_the_daemons_background_probes_never_beat_its_heartbeat(tmp_path: Path) -> None:
    """The watchdog reads the loop's heartbeat: a probe on a worker thread must not make a
    stuck loop look alive (nor may it wait for one: the daemon's passes never wait)."""
    config = tmp_path / "regagent.yaml"
    config.write_text(f"sync: {{state_dir: {tmp_path / 'state'}}}\n")
    app = build(load_config(str(config)), writer=Writer.of(str(config), daemon=True))
    try:
        background = app.discovery.sensor.unconfirmed
        assert background is not None and background.settle == 0.0
        port = free_range(1)[0]  # nothing listens: the probe fails at once
        app.heartbeat.last = 0.0
        background.prober("127.0.0.1", port, "/metrics", 0.5, 1024)
        assert app.heartbeat.last == 0.0
        app.discovery.sensor.prober("127.0.0.1", port, "/metrics", 0.5, 1024)  # in-pass prober
        assert app.heartbeat.last > 0.0
    finally:
        assert app.lock is not None
        app.lock.release()
