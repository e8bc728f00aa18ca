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
