"""The metrics probe: exposition-format judgement, version reading, bounds, https fallback."""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest

from regagent.discovery.probe import parse_exposition, parse_labels, probe_metrics

NODE_EXPORTER_SAMPLE = """\
# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0"} 2.1e-05
go_gc_duration_seconds_sum 0.001
# HELP node_exporter_build_info A metric with a constant '1' value.
# TYPE node_exporter_build_info gauge
node_exporter_build_info{branch="debian/sid",goversion="go1.19.8",version="1.5.0"} 1
node_load1 0.5 1700000000000
node_weird{path="C:\\\\x",msg="a \\"quoted\\" word\\n"} NaN
node_inf +Inf
"""


def test_valid_exposition_yields_names_and_version() -> None:
    exposition = parse_exposition(NODE_EXPORTER_SAMPLE)
    assert exposition.valid
    assert {"node_exporter_build_info", "node_load1", "go_gc_duration_seconds"} <= exposition.names
    assert exposition.version_of(("node_exporter_build_info",)) == "1.5.0"
    assert exposition.version_of() == "1.5.0"


def test_go_build_info_is_not_the_exporter_version() -> None:
    body = 'go_build_info{path="x",version="(devel)"} 1\nfoo 1\n'
    assert parse_exposition(body).version_of() is None


def test_ambiguous_build_infos_give_no_version_unless_preferred() -> None:
    body = 'a_build_info{version="1"} 1\nb_build_info{version="2"} 1\n'
    exposition = parse_exposition(body)
    assert exposition.version_of() is None
    assert exposition.version_of(("b_build_info",)) == "2"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("<html><body>hi</body></html>\n", "not Prometheus exposition format (line 1)"),
        ('{"status": "ok"}\n', "not Prometheus exposition format (line 1)"),
        ("# just a comment\n\n", "no metrics in response"),
        ("metric_without_value\n", "not Prometheus exposition format (line 1)"),
        (
            "metric{bad labels} 1\nfoo_build_info{version=1} 1\n",
            "not Prometheus exposition format (line 2)",
        ),
    ],
)
def test_invalid_bodies_are_rejected(body: str, problem: str) -> None:
    exposition = parse_exposition(body)
    assert not exposition.valid
    assert exposition.problem == problem


def test_truncated_body_ignores_the_partial_last_line() -> None:
    assert parse_exposition("a 1\nb 2\nc{x=", truncated=True).valid


def test_parse_labels_handles_escapes() -> None:
    assert parse_labels(r'{a="x\"y",b="C:\\d",c="l1\nl2"}') == {
        "a": 'x"y',
        "b": "C:\\d",
        "c": "l1\nl2",
    }
    assert parse_labels("{}") == {}
    assert parse_labels("{a=b}") is None


Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


def _serve(
    handler: Handler, tls: ssl.SSLContext | None = None
) -> Tuple[http.server.HTTPServer, int]:
    class _H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            handler(self)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _H)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture
def http_server() -> Iterator[Callable[..., int]]:
    """In-process HTTP servers on loopback, shut down when the test ends."""
    servers: List[http.server.HTTPServer] = []

    def _start(handler: Handler, tls: ssl.SSLContext | None = None) -> int:
        server, port = _serve(handler, tls)
        servers.append(server)
        return port

    yield _start
    for server in servers:
        server.shutdown()
        server.server_close()


def _reply(status: int, body: bytes, ctype: str = "text/plain; version=0.0.4") -> Handler:
    def handler(req: http.server.BaseHTTPRequestHandler) -> None:
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    return handler


def test_probe_reads_at_most_max_bytes(http_server: Callable[..., int]) -> None:
    body = b"".join(b"metric_%d 1\n" % i for i in range(20000))
    port = http_server(_reply(200, body))
    result = probe_metrics("127.0.0.1", port, "/metrics", 2.0, 1000)
    assert result.ok
    assert result.exposition is not None and len(result.exposition.names) < 100


def test_probe_reports_http_errors(http_server: Callable[..., int]) -> None:
    port = http_server(_reply(404, b"404 page not found\n", "text/plain"))
    result = probe_metrics("127.0.0.1", port, "/metrics", 2.0, 10000)
    assert (result.ok, result.reason, result.status) == (False, "HTTP 404 for /metrics", 404)


def test_probe_of_closed_port_is_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = probe_metrics("127.0.0.1", port, "/metrics", 1.0, 1000)
    assert (result.ok, result.reason) == (False, "connection refused")


def _go_like_tls_server(context: ssl.SSLContext, body: bytes) -> Tuple[socket.socket, int]:
    """Serves TLS, and answers plain HTTP with Go's hint, on one port (as Go's net/http does)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        for _ in range(4):  # bounded: the test makes at most two connections
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    first = conn.recv(1, socket.MSG_PEEK)
                    if first == b"\x16":  # TLS handshake record
                        with context.wrap_socket(conn, server_side=True) as tls:
                            tls.recv(65536)
                            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                            tls.sendall(head + b"Connection: close\r\n\r\n" + body)
                    else:
                        conn.recv(65536)
                        conn.sendall(
                            b"HTTP/1.0 400 Bad Request\r\n\r\n"
                            b"Client sent an HTTP request to an HTTPS server.\n"
                        )
                except OSError:
                    continue

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_probe_switches_to_https_when_told(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    listener, port = _go_like_tls_server(context, b'ssl_exporter_build_info{version="2.4"} 1\n')
    with listener:
        result = probe_metrics("127.0.0.1", port, "/metrics", 3.0, 10000)
    assert result.ok and result.scheme == "https"
    assert result.url == f"https://127.0.0.1:{port}/metrics"
    assert result.exposition is not None
    assert result.exposition.version_of() == "2.4"
