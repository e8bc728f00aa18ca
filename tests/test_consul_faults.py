"""Misbehaving Consul servers, played for real on loopback: a server that drips its headers or
its body, sends an endless or oversized answer, answers 429/503, answers the wrong shape.

Each fake is a small threaded TCP server in this file. The pool tests put one fake first in the
server list (it is the home server of NODE, see test_consul_pool) in front of two real emulator
servers, and check that the fake is cooled down with a message that says what happened while the
cycle is served by the emulator. No wall-clock assertions: the bounds are asserted by what the
error says and by the test ending at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import psutil  # type: ignore[import-untyped]  # no stubs for 5.9.x
import pytest

from consulsim import SimCluster
from helpers.consul import NODE, write_config
from regagent.app import build
from regagent.config import load_config
from regagent.config.model import ConsulConfig, TLSConfig
from regagent.consul.answers import (
    BadRequestHeader,
    ServerFailed,
    UnexpectedAnswer,
    describe_failure,
)
from regagent.consul.catalog import read_actual
from regagent.consul.http import stale_get
from regagent.consul.pool import ServerPool, make_client
from regagent.consul.retry import RetryPolicy, start_index
from regagent.consul.transport import BoundedHTTPClient, RequestLimits, TLSOptions
from regagent.errors import ConsulUnreachable
from regagent.model import ServiceIntent, ServiceRegistration
from tls_pki import TLSFiles

Behaviour = Callable[[socket.socket], None]


class FakeServer:
    """Accepts connections on loopback and hands each, after reading the request head, to
    `behaviour` in a thread of its own; counts requests."""

    def __init__(
        self, behaviour: Behaviour, tls: Optional[ssl.SSLContext] = None, host: str = "127.0.0.1"
    ) -> None:
        self.behaviour = behaviour
        self.tls = tls  # a server-side context: HTTPS
        self.host = host
        self.requests: List[str] = []
        self.heads: List[str] = []  # each request's line and headers
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            self.requests.append(head.split(b"\r\n", 1)[0].decode())
            self.heads.append(head.split(b"\r\n\r\n", 1)[0].decode())
            self.behaviour(conn)

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


@contextlib.contextmanager
def fake_server(
    behaviour: Behaviour, tls: Optional[ssl.SSLContext] = None, host: str = "127.0.0.1"
) -> Iterator[FakeServer]:
    server = FakeServer(behaviour, tls, host)
    try:
        yield server
    finally:
        server.close()


def drip(data: bytes, pause: float = 0.05) -> Behaviour:
    """Sends `data`, one byte per `pause`, then keeps dripping spaces forever."""

    def behaviour(conn: socket.socket) -> None:
        for byte in data:
            conn.sendall(bytes([byte]))
            time.sleep(pause)
        while True:
            conn.sendall(b" ")
            time.sleep(pause)

    return behaviour


def endless(conn: socket.socket) -> None:
    """A 200 with no length that never ends: as fast as the client reads."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[")
    block = b'"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",' * 1300
    while True:
        conn.sendall(block)


def answer(status: int, body: Any, **headers: str) -> Behaviour:
    """One complete answer: `body` as JSON (or raw text if it is a str)."""
    payload = (body if isinstance(body, str) else json.dumps(body)).encode()
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(payload)}", "Connection: close"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]

    def behaviour(conn: socket.socket) -> None:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)

    return behaviour


def bounded(server: FakeServer, **limits: Any) -> BoundedHTTPClient:
    return BoundedHTTPClient("127.0.0.1", server.port, limits=RequestLimits(**limits))


def get(client: BoundedHTTPClient) -> Any:
    return client.get(lambda response: response, "/v1/status/leader")


# --- the transport alone ------------------------------------------------------------------------


def test_headers_dripped_one_byte_at_a_time_are_cut_at_the_overall_deadline() -> None:
    with fake_server(drip(b"HTTP/1.1 200 OK\r\nX-Pad: ")) as server:
        client = bounded(server, connect_timeout=1, read_timeout=5, deadline=0.5)
        with pytest.raises(ServerFailed, match=r"too slow: no complete answer within 0.5s"):
            get(client)


def test_a_body_dripped_one_byte_at_a_time_is_cut_at_the_overall_deadline() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"

    def behaviour(conn: socket.socket) -> None:
        conn.sendall(head)
        drip(b"[")(conn)

    with fake_server(behaviour) as server:
        client = bounded(server, connect_timeout=1, read_timeout=5, deadline=0.5)
        with pytest.raises(ServerFailed, match="too slow"):
            get(client)


def test_a_drip_over_tls_is_cut_at_the_overall_deadline(tls_files: TLSFiles) -> None:
    """The deadline holds on the TLS socket too, which is a socket class of its own."""
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    with fake_server(drip(b"HTTP/1.1 200 OK\r\nX-Pad: "), tls=server_side) as server:
        limits = RequestLimits(connect_timeout=1, read_timeout=5, deadline=0.5)
        tls = TLSOptions(ca_file=str(tls_files.ca))
        client = BoundedHTTPClient("127.0.0.1", server.port, "https", limits=limits, tls=tls)
        with pytest.raises(ServerFailed, match=r"too slow: no complete answer within 0.5s"):
            get(client)


def test_a_certificate_of_the_right_ca_for_another_name_is_refused(tls_files: TLSFiles) -> None:
    """Verification checks the name, not only the CA: the test server certificate names
    127.0.0.1, ::1 and localhost, so the same server at 127.0.0.2 is refused (a regression to
    check_hostname=False would pass every other TLS test)."""
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    config = ConsulConfig(scheme="https", tls=TLSConfig(ca_file=str(tls_files.ca)))
    leader = answer(200, '"10.0.0.1:8300"')
    for host, refused in (("127.0.0.1", False), ("127.0.0.2", True)):
        with fake_server(leader, tls=server_side, host=host) as server:
            client = make_client(server.address, config, None, RetryPolicy())
            if not refused:
                assert client.leader() == "10.0.0.1:8300"
                continue
            with pytest.raises(ServerFailed) as failed:
                client.leader()
            assert failed.value.reason == (
                "TLS error: certificate verify failed "
                "(IP address mismatch, certificate is not valid for '127.0.0.2')"
            )
            assert server.requests == []  # nothing was sent


def client_sockets_to(port: int) -> int:
    """This process's open sockets connected to `port` (the fake server's: client side)."""
    return sum(1 for c in psutil.Process().connections("tcp") if c.raddr and c.raddr.port == port)


def test_a_refused_answer_closes_its_socket_while_the_error_is_kept() -> None:
    """An answer refused while read (too large) closes its socket at once: the error's
    traceback, kept by a caller (pytest.raises here), must not hold it open until a GC."""
    with fake_server(answer(200, "x" * 2048)) as server:
        failures = []
        for _ in range(3):
            with pytest.raises(ServerFailed, match="answer too large") as failed:
                get(bounded(server, max_bytes=1024))
            failures.append(failed)
        assert client_sockets_to(server.port) == 0


def test_a_leader_answer_that_is_not_json_says_so() -> None:
    with fake_server(answer(200, "<html>login</html>")) as server:
        client = make_client(server.address, ConsulConfig(), None, RetryPolicy())
        with pytest.raises(UnexpectedAnswer) as failed:
            client.leader()
        assert describe_failure(failed.value) == "answer is not JSON (is this a Consul server?)"


def test_an_endless_answer_is_cut_at_the_size_cap() -> None:
    with fake_server(endless) as server:
        client = bounded(server, max_bytes=1024 * 1024, deadline=30)
        with pytest.raises(ServerFailed, match=r"answer too large \(over 1048576 bytes\)"):
            get(client)


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    with fake_server(answer(200, "x" * 2048)) as server:
        with pytest.raises(ServerFailed, match="answer too large"):
            get(bounded(server, max_bytes=1024))
        assert get(bounded(server, max_bytes=4096)).body == "x" * 2048


def test_a_silent_server_is_a_read_timeout_not_a_connection_failure() -> None:
    with (
        fake_server(lambda conn: time.sleep(5)) as server,
        pytest.raises(ServerFailed, match=r"^no answer \(read timed out\)$"),
    ):
        get(bounded(server, read_timeout=0.2, deadline=5))


@pytest.mark.parametrize("token", ["se\ncret", "sécrét\u20ac"])
def test_a_token_that_cannot_be_a_header_is_a_local_error_never_quoted(token: str) -> None:
    with fake_server(answer(200, "")) as server:
        client = bounded(server)
        with pytest.raises(BadRequestHeader) as failed:
            client.get(lambda r: r, "/v1/status/leader", headers={"X-Consul-Token": token})
    assert "cret" not in str(failed.value) and "crét" not in str(failed.value)
    assert server.requests == []  # nothing was sent


def test_a_bad_token_cools_no_server_down(tmp_path: Path, consul_cluster: SimCluster) -> None:
    config = load_config(str(write_config(tmp_path, consul_cluster, [])))
    pool = ServerPool(config.consul, "bad\ntoken")
    with pytest.raises(BadRequestHeader):
        read_actual(pool, NODE)
    assert not any(s.cooling(time.monotonic()) for s in pool.servers)
    assert consul_cluster.stats()["requests"] == 0


def test_the_client_ignores_consul_http_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONSUL_HTTP_ADDR and friends, which python-consul2 let override its arguments, redirect
    nothing: the request goes to the configured server, with the configured token."""
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")
    monkeypatch.setenv("CONSUL_HTTP_SSL", "true")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-the-environment")
    with fake_server(answer(200, '"10.0.0.1:8300"')) as server:
        config = ConsulConfig(servers=(server.address,))
        client = make_client(server.address, config, "configured", RetryPolicy())
        assert client.leader() == "10.0.0.1:8300"
        assert server.requests == ["GET /v1/status/leader HTTP/1.1"]
    # A read of regagent's carries the configured token and datacenter, nothing of the
    # environment's.
    with fake_server(answer(200, {"Node": None, "Services": {}})) as server:
        config = ConsulConfig(servers=(server.address,), datacenter="dc7")
        client = make_client(server.address, config, "configured", RetryPolicy())
        stale_get(client, f"/v1/catalog/node/{NODE}", dict)
        assert server.requests == [f"GET /v1/catalog/node/{NODE}?stale=1&dc=dc7 HTTP/1.1"]
        headers = server.heads[0].split("\r\n")[1:]
        assert "X-Consul-Token: configured" in headers
        assert "from-the-environment" not in server.heads[0]


def test_the_client_ignores_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")
    with fake_server(answer(200, "ok")) as server:
        assert get(bounded(server)).body == "ok"
        assert server.requests == ["GET /v1/status/leader HTTP/1.1"]


def test_the_policy_handed_to_the_pool_bounds_its_requests() -> None:
    """The clients take their timeouts and deadline from the pool's policy (the one app.build
    makes), not from a second one built from the configuration (10 s + 2 s by default)."""
    with fake_server(drip(b"HTTP/1.1 200 OK\r\nX-Pad: ")) as server:
        policy = RetryPolicy(connect_timeout=0.2, read_timeout=0.3)
        pool = ServerPool(ConsulConfig(servers=(server.address,)), policy=policy)
        with pytest.raises(ConsulUnreachable, match=r"too slow: no complete answer within 0.5s"):
            pool.call("read", lambda client: get(client.http))


# --- the pool: the bound cools the server down and fails over ------------------------------------


def engine_with_fake_first(cluster: SimCluster, fake: FakeServer, tmp_path: Path) -> Any:
    """A 20-service engine whose home server is the fake, then two emulator servers."""
    servers = [fake.address, cluster.addresses[1], cluster.addresses[2]]
    assert start_index(NODE, 3) == 0  # NODE's home is the first server in the list
    path = write_config(
        tmp_path,
        cluster,
        [],
        consul={
            "servers": servers,
            "read_timeout": "1s",
            "connect_timeout": "1s",
            "cooldown_initial": "30s",
            "cooldown_max": "60s",
        },
    )
    intents = [
        ServiceIntent(
            ServiceRegistration(f"s{i}-{9000 + i}", f"s{i}", 9000 + i, "127.0.0.1"), "static"
        )
        for i in range(20)
    ]
    return build(load_config(str(path)), intent_source=lambda *_: intents)


FAULTS = {
    "dripped headers": (drip(b"HTTP/1.1 200 OK\r\nX-Pad: ", 0.2), "too slow: no complete answer"),
    "endless answer": (endless, "answer too large (over 16777216 bytes)"),
    "429": (answer(429, "rate limit exceeded", Retry_After="60"), "rate limited (429"),
    "503": (answer(503, "overloaded"), "unavailable (503"),
    "wrong shape": (answer(200, {"Node": "not an object"}), "malformed document"),
    "wrong type": (answer(200, [1, 2, 3]), "answered a JSON list, not a dict"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_misbehaving_first_server_is_cooled_down_and_the_cycle_fails_over(
    consul_cluster: SimCluster, tmp_path: Path, fault: str
) -> None:
    behaviour, message = FAULTS[fault]
    with fake_server(behaviour) as fake:
        app = engine_with_fake_first(consul_cluster, fake, tmp_path)
        report = app.engine.cycle()
        assert report.error is None, report.error
        assert report.server in consul_cluster.addresses[1:]
        assert report.writes == 20
        assert app.pool.wait_idle(30)
        home = app.pool.servers[0]
        assert message in home.last_error
        assert home.cooling(time.monotonic())
        asked = len(fake.requests)
        again = app.engine.cycle()
        assert again.error is None and again.plan is not None and again.plan.empty
        assert len(fake.requests) == asked  # cooling down: not asked again


def test_429_cools_down_for_at_least_retry_after(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    with fake_server(answer(429, "slow down", Retry_After="50")) as fake:
        app = engine_with_fake_first(consul_cluster, fake, tmp_path)
        assert app.engine.cycle().error is None
        assert app.pool.wait_idle(10)
        assert app.pool.servers[0].cooldown_until - time.monotonic() > 45  # 24-36 s by policy


def test_survey_reports_a_bounded_failure(tmp_path: Path, consul_cluster: SimCluster) -> None:
    with fake_server(endless) as fake:
        config = load_config(str(write_config(tmp_path, consul_cluster, [])))
        client = make_client(fake.address, config.consul, None, RetryPolicy.from_config(config))
        with pytest.raises(ServerFailed, match="answer too large"):
            client.leader()


def test_a_huge_hostile_refusal_is_one_short_line_in_every_error(
    tmp_path: Path, consul_cluster: SimCluster
) -> None:
    """A 403 whose body is 200 kB with newlines and terminal escapes (a proxy's page, or worse)
    becomes one short, printable line: logs, stderr, `status` and STATUS= all show it."""
    body = "Permission denied: " + "x" * 200_000 + "\n\x1b[31mred\x1b[0m"
    with fake_server(answer(403, body)) as fake:
        app = engine_with_fake_first(consul_cluster, fake, tmp_path)
        report = app.engine.cycle()
    assert report.error is not None
    text = str(report.error)
    assert "refused the request (403)" in text
    assert len(text) < 400
    assert "\n" not in text and "\x1b" not in text


def test_an_unknown_datacenter_is_a_refusal_not_a_dead_cluster(
    tmp_path: Path, consul_cluster: SimCluster
) -> None:
    """Consul answers `?dc=` naming a datacenter no server knows with 500 `No path to
    datacenter` (the emulator too): every server would say the same, so it is reported as what
    it is, once, and no server is cooled down."""
    from helpers.consul import regagent, static
    from regagent.daemon import status_text
    from regagent.errors import ConsulRefused

    path = write_config(
        tmp_path, consul_cluster, [static("queue", 9000)], consul={"datacenter": "dc9"}
    )
    app = build(load_config(str(path)))
    consul_cluster.reset_stats()
    report = app.engine.cycle()
    assert isinstance(report.error, ConsulRefused)
    assert report.error.status == 500
    assert "No path to datacenter" in str(report.error)
    assert "'dc9'" in str(report.error) and "consul.datacenter" in str(report.error)
    assert status_text(report, 3).startswith("Consul refused a request")
    assert app.pool.wait_idle(10)
    assert not any(s.cooling(time.monotonic()) for s in app.pool.servers)
    assert consul_cluster.stats()["requests"] == 1
    result = regagent(path, "sync")
    assert result.returncode == 1
    assert "No path to datacenter" in result.stderr and "reachable" not in result.stderr


# Under its own mount and network namespaces: resolv.conf names a DNS server on 127.0.0.1:53 that
# never answers (glibc then waits timeout x attempts, here 10 s and more). Four leader calls to a
# server written by host name; prints their failures and the lookups still running.
HUNG_RESOLVER = """
import json, socket, threading
from regagent.config.model import ConsulConfig
from regagent.consul.answers import ServerFailed
from regagent.consul.pool import make_client
from regagent.consul.retry import RetryPolicy
dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dns.bind(("127.0.0.1", 53))  # receives the queries, answers none
policy = RetryPolicy(connect_timeout=0.5, read_timeout=1.0)
client = make_client("consul.regagent.test:8500", ConsulConfig(), None, policy)
reasons = []
for _ in range(4):
    try:
        client.leader()
    except ServerFailed as exc:
        reasons.append(exc.reason)
lookups = [t.name for t in threading.enumerate() if t.name.startswith("regagent-resolve-")]
print(json.dumps({"reasons": reasons, "lookups": lookups}))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)"
)
def test_a_server_host_name_is_resolved_within_the_connect_timeout(tmp_path: Path) -> None:
    """getaddrinfo takes no timeout: a hung resolver held every request (and a hedged read's
    race) for as long as resolv.conf's retries. Now each waits its connect timeout, and the
    requests share one lookup."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:5 attempts:2\n")
    setup = 'ip link set lo up\nmount --bind "$0" /etc/resolv.conf\nexec "$@"\n'
    shown = subprocess.run(
        [
            "unshare",
            "--mount",
            "--net",
            "sh",
            "-ec",
            setup,
            str(resolv),
            sys.executable,
            "-c",
            HUNG_RESOLVER,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert shown.returncode == 0, shown.stderr
    seen = json.loads(shown.stdout)
    assert seen["reasons"] == ["connection failed (name resolution timed out)"] * 4
    assert seen["lookups"] == ["regagent-resolve-consul.regagent.test"]
