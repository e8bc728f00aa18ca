"""Health checks run on the host: stable output texts and flap protection.

Servers are in-process threads on loopback, shut down when each test ends.
"""

from __future__ import annotations

import errno
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

from regagent.health import Health, ProbePool
from regagent.health.checks import http_check, run_probes, tcp_check, tcp_checks
from regagent.health.flap import FlapGuard
from regagent.health.http import bounded_get
from regagent.model import (
    CRITICAL,
    PASSING,
    WARNING,
    HealthProbe,
    ServiceIntent,
    ServiceRegistration,
)
from regagent.threads import SIGNALS

GOOD = (PASSING, "HTTP GET http://127.0.0.1:9100/metrics: 200 OK")
BAD = (CRITICAL, "HTTP GET http://127.0.0.1:9100/metrics: timed out")


def test_flap_guard_holds_the_last_good_result_through_two_failures() -> None:
    guard = FlapGuard(3)
    assert guard.observe("a", GOOD) == GOOD
    assert [guard.observe("a", BAD) for _ in range(4)] == [GOOD, GOOD, BAD, BAD]
    assert guard.failures("a") == 4
    assert guard.observe("a", GOOD) == GOOD  # recovery shows at once
    assert guard.failures("a") == 0
    assert guard.observe("a", BAD) == GOOD  # and the count starts again


def test_flap_guard_without_a_good_result_reports_failures_at_once() -> None:
    guard = FlapGuard(3)
    assert guard.observe("new", BAD) == BAD
    guard.observe("gone", GOOD)
    guard.forget("gone")
    assert guard.observe("gone", BAD) == BAD
    guard.observe("dropped", GOOD)
    guard.retain(["new"])
    assert guard.observe("dropped", BAD) == BAD


def test_flap_guard_counts_only_critical_as_failure() -> None:
    guard = FlapGuard(2)
    warning = (WARNING, "HTTP GET http://127.0.0.1:9100/metrics: 429 Too Many Requests")
    guard.observe("a", GOOD)
    assert guard.observe("a", warning) == warning
    assert guard.observe("a", BAD) == warning  # the last result that was not a failure


def test_flap_guard_of_one_holds_nothing() -> None:
    guard = FlapGuard(1)
    guard.observe("a", GOOD)
    assert guard.observe("a", BAD) == BAD


def test_health_checks_hold_a_static_service_through_a_short_outage() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    probe = HealthProbe("tcp", f"127.0.0.1:{port}", 1.0)
    intent = ServiceIntent(ServiceRegistration("app-1", "app", port), "static", probe=probe)
    checks = Health(failures_before_critical=2)
    try:
        up = checks.evaluate([intent])["app-1"]
        assert up == (PASSING, f"TCP connect 127.0.0.1:{port}: success")
    finally:
        server.close()
    assert checks.evaluate([intent])["app-1"] == up
    assert checks.evaluate([intent])["app-1"] == (
        CRITICAL,
        f"TCP connect 127.0.0.1:{port}: connection refused",
    )


@pytest.fixture
def self_signed(tmp_path: Path) -> Tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command missing")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    argv = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    argv += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    argv += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        argv,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def https_port(self_signed: Tuple[Path, Path]) -> Iterator[int]:
    """An HTTPS server with that certificate, in a thread; shut down afterwards."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(self_signed[0]), str(self_signed[1]))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def test_self_signed_certificate_reads_as_such(https_port: int) -> None:
    url = f"https://127.0.0.1:{https_port}/metrics"
    assert http_check(url, 5.0) == (
        CRITICAL,
        f"HTTP GET {url}: certificate verify failed (self-signed certificate)",
    )


def test_https_checks_load_the_ca_store_once_per_pool_and_discovery_never(
    https_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading the system CA store (ssl.create_default_context) costs more than a check: the
    probe pool builds the verifying context once and keeps it across cycles, and discovery's
    probe, which does not verify, never loads it."""
    built: List[bool] = []
    real = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    probes = [
        HealthProbe("http", f"https://127.0.0.1:{https_port}/metrics?n={n}", 5.0) for n in range(3)
    ]
    with ProbePool(2) as pool:
        for _ in range(2):
            results = pool(probes)
            assert all(
                text.endswith("certificate verify failed (self-signed certificate)")
                for _, text in results.values()
            )
    assert len(built) == 1
    # discovery's GET (regagent.discovery.probe): over TLS, not verified
    answer = bounded_get(
        f"https://127.0.0.1:{https_port}/metrics", timeout=5.0, max_bytes=1024, verify=False
    )
    assert answer.status == 501  # BaseHTTPRequestHandler has no do_GET: it answered, over TLS
    assert len(built) == 1


def test_other_tls_failures_name_the_reason() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/metrics"  # plain HTTP answers
        assert http_check(url, 5.0) == (
            CRITICAL,
            f"HTTP GET {url}: TLS error (wrong version number)",
        )
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def test_http_check_has_an_overall_deadline_against_a_trickling_server(tmp_path: Path) -> None:
    fake = Path(__file__).parent / "data" / "discovery" / "fake_server.py"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(fake), "drip", "127.0.0.1", str(port), "--lifetime", "60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):  # bounded wait for the listener
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                threading.Event().wait(0.025)
        outcome: List[Tuple[str, str]] = []
        worker = threading.Thread(
            target=lambda: outcome.append(http_check(f"http://127.0.0.1:{port}/metrics", 0.5)),
            daemon=True,
        )
        worker.start()
        worker.join(timeout=30)  # each byte resets a per-read timeout: only a deadline ends it
        assert outcome == [(CRITICAL, f"HTTP GET http://127.0.0.1:{port}/metrics: timed out")]
    finally:
        server.terminate()
        server.wait(timeout=10)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_tcp_checks_at_once_say_what_one_at_a_time_says() -> None:
    """All connects at once in one thread (tcp_checks) report what a connect each would:
    passing, refused, and timed out against a listener whose accept queue is full."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(8)
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = [socket.socket() for _ in range(3)]
    try:
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(full.getsockname())
        probes = [
            HealthProbe("tcp", f"127.0.0.1:{listening.getsockname()[1]}", 2.0),
            HealthProbe("tcp", f"127.0.0.1:{closed_port()}", 2.0),
            HealthProbe("tcp", f"127.0.0.1:{full.getsockname()[1]}", 0.3),
        ]
        at_once = tcp_checks(probes)
        one_by_one = {probe: tcp_check(probe.target, probe.timeout) for probe in probes}
        assert at_once == one_by_one
        assert [status for status, _ in (at_once[p] for p in probes)] == [
            PASSING,
            CRITICAL,
            CRITICAL,
        ]
        assert at_once[probes[1]][1].endswith(": connection refused")
        assert at_once[probes[2]][1].endswith(": timed out")
        # run_probes sends these through tcp_checks and a host name through a thread.
        named = HealthProbe("tcp", f"localhost:{listening.getsockname()[1]}", 2.0)
        assert run_probes([*probes, named]) == {**at_once, named: tcp_check(named.target, 2.0)}
    finally:
        for sock in (listening, full, *fillers):
            sock.close()


# Checks 60 listeners' ports under a soft limit of 40 descriptors; prints each status.
LOW_FD_LIMIT = """
import json, resource, sys
from regagent.health.checks import tcp_checks
from regagent.model import HealthProbe
probes = [HealthProbe("tcp", f"127.0.0.1:{port}", 5.0) for port in sys.argv[1:]]
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard))
results = tcp_checks(probes)
print(json.dumps([results[probe] for probe in probes]))
"""


def listeners(count: int) -> List[socket.socket]:
    found: List[socket.socket] = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        found.append(sock)
    return found


def test_tcp_checks_out_of_descriptors_wait_for_the_connects_in_flight() -> None:
    """More checks than descriptors left: each still passes (the rest wait for a next batch),
    where one EMFILE used to fail every check of the cycle."""
    servers = listeners(60)
    try:
        ports = [str(server.getsockname()[1]) for server in servers]
        done = subprocess.run(
            [sys.executable, "-c", LOW_FD_LIMIT, *ports],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        for server in servers:
            server.close()
    assert done.returncode == 0, done.stderr
    statuses = json.loads(done.stdout)
    assert len(statuses) == 60
    assert all(
        status == [PASSING, f"TCP connect 127.0.0.1:{port}: success"]
        for status, port in zip(statuses, ports)
    )


def test_tcp_checks_in_batches_say_what_one_at_a_time_says() -> None:
    servers = listeners(5)
    try:
        probes = [HealthProbe("tcp", f"127.0.0.1:{s.getsockname()[1]}", 2.0) for s in servers]
        probes.insert(2, HealthProbe("tcp", f"127.0.0.1:{closed_port()}", 2.0))
        in_twos = tcp_checks(probes, batch=2)
        assert in_twos == {probe: tcp_check(probe.target, probe.timeout) for probe in probes}
        assert [status for status, _ in in_twos.values()].count(PASSING) == 5
    finally:
        for server in servers:
            server.close()


def test_a_socket_call_that_fails_fails_its_probe_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """An IPv6 check on a host without IPv6 (booted with ipv6.disable=1: socket() fails with
    EAFNOSUPPORT) is critical; the other checks of the cycle still run."""
    real_socket = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: Any, **kwargs: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return real_socket(family, *args, **kwargs)

    (server,) = listeners(1)
    try:
        v4 = HealthProbe("tcp", f"127.0.0.1:{server.getsockname()[1]}", 2.0)
        v6 = HealthProbe("tcp", "[2001:db8::1]:9100", 2.0)
        monkeypatch.setattr(socket, "socket", no_ipv6)
        results = tcp_checks([v6, v4])
    finally:
        monkeypatch.undo()
        server.close()
    assert results[v4][0] == PASSING
    assert results[v6][0] == CRITICAL
    assert results[v6][1].startswith("TCP connect [2001:db8::1]:9100: ")
    assert "not supported" in results[v6][1].lower()


def _blocked_signals(native_id: int) -> int:
    """The signal mask of one of this process's threads, from /proc."""
    with open(f"/proc/self/task/{native_id}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigBlk line")


def test_the_probe_pool_keeps_its_threads_across_cycles_and_leaves_signals_to_main() -> None:
    """The daemon's checks run on threads started once (starting eight per cycle cost more
    CPU than the checks) and blind to the signals that must wake the main thread. TCP checks
    of a host name take the threads (those of an address connect in the calling thread)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        probe = HealthProbe("tcp", f"localhost:{port}", 1.0)
        closed = HealthProbe("tcp", "localhost:1", 1.0)
        pool = ProbePool(workers=2)
        try:
            threads = set()
            for _ in range(5):  # five cycles, a probe shared by two services in each
                results = pool([probe, probe, closed])
                assert list(results) == [probe, closed]
                assert results[probe][0] == PASSING and results[closed][0] == CRITICAL
                threads |= {t for t in threading.enumerate() if t.name.startswith("regagent-check")}
            assert 1 <= len(threads) <= 2, "the same threads, cycle after cycle"
            for thread in threads:
                assert thread.native_id is not None
                mask = _blocked_signals(thread.native_id)
                assert all(mask & (1 << (sig - 1)) for sig in SIGNALS), thread.name
        finally:
            pool.close()
    assert not any(t.name.startswith("regagent-check") for t in threading.enumerate())
