"""The bounded `/metrics` endpoint against clients that misbehave for real over loopback: idle
sockets, slow-header clients (a few, and hundreds), a client dripping its headers, a reset flood.
Sources are other loopback addresses (127.0.0.2 and up), so the per-address bound is played too.
No wall-clock assertions: every wait is a bounded loop on what the endpoint does."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.error
import urllib.request
from typing import Iterator, List, Tuple

import pytest

from hostile_clients import rst_flood, slow_header_clients
from regagent.metrics import Metrics
from regagent.metrics_endpoint import EndpointLimits, MetricsServer

LIMITS = EndpointLimits()


@contextlib.contextmanager
def serving(limits: EndpointLimits = LIMITS) -> Iterator[int]:
    """A started endpoint on a free loopback port; stopped when the test ends."""
    server = MetricsServer(Metrics().render, "127.0.0.1:0", limits)
    assert server.start()
    try:
        assert server.port is not None
        yield server.port
    finally:
        server.stop()


@pytest.fixture
def port() -> Iterator[int]:
    with serving() as bound:
        yield bound


def get(port: int, path: str = "/metrics") -> Tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def raw(port: int, request: bytes) -> bytes:
    """The whole answer to `request` (the endpoint closes after answering)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def idle(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True once the server has closed `sock` (within `timeout`), False if it stays open."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def test_endpoint_serves_metrics_and_only_metrics(port: int) -> None:
    status, body = get(port)
    assert status == 200 and "regagent_build_info" in body
    assert get(port, "/elsewhere")[0] == 404
    assert get(port, "/?x=1")[0] == 200


def test_requests_it_does_not_serve_get_a_short_answer(port: int) -> None:
    assert raw(port, b"POST /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 405 ")
    assert raw(port, b"nonsense\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    too_long = b"GET /metrics HTTP/1.0\r\n" + b"X-Pad: " + b"a" * LIMITS.max_request_bytes
    assert raw(port, too_long).startswith(b"HTTP/1.0 431 ")
    head = raw(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ") and head.endswith(b"\r\n\r\n")  # no body


def test_endpoint_that_cannot_bind_is_reported_not_fatal(port: int) -> None:
    taken = MetricsServer(Metrics().render, f"127.0.0.1:{port}")
    assert not taken.start()
    taken.stop()


def test_beyond_its_bounds_the_longest_waiting_connection_makes_room_for_a_scraper() -> None:
    """Idle sockets fill a bound (one address's share, then the whole table); a scraper beyond
    it is answered, and the idle socket opened first is the one closed: the bound holds."""
    limits = EndpointLimits(request_deadline=60.0)  # the idle sockets outlive the test
    # One address's share: the scraper comes from the same address as the idle ones.
    with serving(limits) as port, held_open(port, ["127.0.0.1"] * limits.max_per_peer) as held:
        assert get(port)[0] == 200
        assert closed_by_server(held[0])
        assert not any(closed_by_server(sock, 0.1) for sock in held[1:])
    # The whole table, from addresses that each stay within their share.
    sources = [f"127.0.0.{2 + i // limits.max_per_peer}" for i in range(limits.max_connections)]
    with serving(limits) as port, held_open(port, sources) as held:
        assert get(port)[0] == 200
        assert closed_by_server(held[0])
        assert not any(closed_by_server(sock, 0.02) for sock in held[1:])


@contextlib.contextmanager
def held_open(port: int, sources: List[str]) -> Iterator[List[socket.socket]]:
    """Idle connections, one per source address in order, closed when the block ends."""
    held: List[socket.socket] = []
    try:
        for source in sources:
            held.append(idle(port, source))
        yield held
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize(
    ("count", "sources"),
    [
        (4, ["127.0.0.2"]),  # the four connections that denied the endpoint before
        (300, ["127.0.0.2"]),  # hundreds from one address
        (300, [f"127.0.1.{i}" for i in range(1, 101)]),  # hundreds, spread over 100 addresses
    ],
    ids=["4-slow", "300-slow-one-address", "300-slow-100-addresses"],
)
def test_every_scrape_is_answered_while_slow_header_clients_hold_connections(
    count: int, sources: List[str]
) -> None:
    with (
        serving() as port,
        slow_header_clients("127.0.0.1", port, count, every=0.2, sources=sources) as slow,
    ):
        for _ in range(100):  # let them connect and start dripping
            if slow.connects >= count:
                break
            time.sleep(0.05)
        answered = [get(port)[0] for _ in range(10)]
        assert answered == [200] * 10
        assert slow.connects >= count


def test_a_request_dripped_a_byte_at_a_time_is_cut_at_the_deadline() -> None:
    """Each byte arrives well within any per-read timeout; the request as a whole does not
    arrive within the deadline, so the endpoint closes the connection."""
    with serving(EndpointLimits(request_deadline=1.0)) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n")
            closed = False
            for _ in range(50):  # 10 s of dripping at most
                try:
                    sock.sendall(b"X")
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                if closed_by_server(sock, 0.2):
                    closed = True
                    break
            assert closed
        assert get(port)[0] == 200


def test_a_reset_flood_writes_nothing_to_stderr_and_the_endpoint_keeps_serving(
    port: int, capfd: pytest.CaptureFixture[str]
) -> None:
    made = rst_flood("127.0.0.1", port, seconds=2.0)
    assert made > 0
    assert get(port)[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err[:2000]


ENDPOINT_WITH_FEW_FDS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
from regagent.logs import configure_logging
configure_logging("warning")  # to stderr: stdout carries the answers
from regagent.metrics import Metrics
from regagent.metrics_endpoint import EndpointLimits, MetricsServer
server = MetricsServer(Metrics().render, "127.0.0.1:0", EndpointLimits(request_deadline=3.0))
assert server.start()
print(server.port, flush=True)
for line in sys.stdin:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(usage.ru_utime + usage.ru_stime, flush=True)
server.stop()
"""


def test_out_of_file_descriptors_it_pauses_accepting_instead_of_spinning() -> None:
    """The endpoint's process may open 40 files; 60 idle clients (each within its address's
    share) make accept() fail with EMFILE. The endpoint stops watching its listener for a
    moment instead of spinning on it, and serves again once the idle ones are cut off."""
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", ENDPOINT_WITH_FEW_FDS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    held: List[socket.socket] = []
    try:
        port = int(child.stdout.readline())
        for i in range(60):
            sock = socket.socket()
            sock.bind((f"127.0.2.{i + 1}", 0))
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            held.append(sock)
        child.stdin.write("cpu\n")
        child.stdin.flush()
        before = float(child.stdout.readline())
        time.sleep(2.0)  # out of descriptors all along: the idle clients have 3 s
        child.stdin.write("cpu\n")
        child.stdin.flush()
        spent = float(child.stdout.readline()) - before
        assert spent < 0.25, f"{spent:.2f} s of CPU in 2 s: spinning on the listener"
        answered = False
        for _ in range(20):
            try:
                answered = get(port)[0] == 200
            except OSError:
                answered = False
            if answered:
                break
            time.sleep(0.5)
        assert answered
    finally:
        for sock in held:
            sock.close()
        child.stdin.close()  # the child stops its endpoint and exits
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        assert child.stderr is not None
        stderr = child.stderr.read()
        child.stderr.close()
        child.stdout.close()
    accept_failed = [line for line in stderr.splitlines() if "metrics_accept_failed" in line]
    assert len(accept_failed) == 1, stderr  # one line a minute, however often it happens
