"""One emulated server's HTTP port, with the transport faults tests inject.

* stopped: the listening socket is closed (connection refused) and open connections are cut;
  ``start`` binds the same port again;
* black-holed: connections are accepted and requests read, but never answered;
* slow: every answer is delayed by a fixed number of seconds.

With a TLS context the port speaks HTTPS. The handshake runs in the connection's own thread
(never in the accept loop, so a client that connects and says nothing cannot stall the port),
and a plain-HTTP request gets the answer Go's net/http gives it (Consul is a Go program).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import socket
import ssl
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Set, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from .http_api import ConsulAPI, Request, Response
from .sim import ServerDown, Simulation
from .topology import ServerFaults

# A client that connects but never completes the TLS handshake is dropped after this long.
HANDSHAKE_TIMEOUT = 10.0
# After a failed handshake, how long the client gets to read the alert and close.
LINGER_TIMEOUT = 1.0

# Go's net/http answers a plain-HTTP request on a TLS port with exactly this, then closes
# (server.go: tlsRecordHeaderLooksLikeHTTP), so Consul with TLS on does too.
_HTTP_ON_TLS_PORT = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
_HTTP_RECORD_HEADERS = (b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO")
_TLS_HANDSHAKE_RECORD = 0x16


def server_tls_context(
    cert_file: str, key_file: str, client_ca_file: Optional[str] = None
) -> ssl.SSLContext:
    """Server-side TLS like Consul's HTTPS port; a client CA makes client certificates required
    (Consul's ``verify_incoming``). Raises OSError/ssl.SSLError for unusable files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # Consul's default tls_min_version
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        context.load_verify_locations(cafile=client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers its open connections so ``stop`` can cut them."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], owner: ServerListener) -> None:
        self.owner = owner
        self.connections: Set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        if ":" in address[0]:  # --bind ::1: an IPv6 server, written [::1]:port
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown, also for a TLS connection: SSLSocket.shutdown
                # would drop the SSL object under the thread that is reading through it.
                socket.socket.shutdown(conn, socket.SHUT_RDWR)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's thread: the TLS handshake (if any), then the handler."""
        context = self.owner.tls
        if context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT)
        if not self._looks_like_tls(request):
            return
        conn = context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        # wrap_socket took over the file descriptor: track the TLS socket from now on.
        with self.conn_lock:
            self.connections.discard(request)
            self.connections.add(conn)
        try:
            try:
                conn.do_handshake()
            except (ssl.SSLError, OSError):
                # Missing or untrusted client certificate, or a client that gave up: OpenSSL
                # has sent the alert. Nothing to answer, but let the client read that alert.
                self._linger(conn)
                return
            conn.settimeout(None)
            super().finish_request(conn, client_address)
        finally:
            with self.conn_lock:
                self.connections.discard(conn)
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            conn.close()

    @staticmethod
    def _linger(conn: socket.socket) -> None:
        """Half-close and drain briefly before closing: under TLS 1.3 the client has sent its
        request before the server rejects its certificate, and closing with that request
        unread makes the kernel send a reset that can destroy the alert in flight (the client
        would then report a bare EOF instead of "certificate required")."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(conn, socket.SHUT_WR)
            socket.socket.settimeout(conn, LINGER_TIMEOUT)
            deadline = time.monotonic() + LINGER_TIMEOUT
            while time.monotonic() < deadline and socket.socket.recv(conn, 4096):
                pass

    @staticmethod
    def _looks_like_tls(request: socket.socket) -> bool:
        """False (after answering like Go, if it is HTTP) when the client did not start TLS."""
        try:
            head = request.recv(5, socket.MSG_PEEK)
        except OSError:
            return False
        if head and head[0] == _TLS_HANDSHAKE_RECORD:
            return True
        if head in _HTTP_RECORD_HEADERS:
            with contextlib.suppress(OSError):
                request.sendall(_HTTP_ON_TLS_PORT)
        return False


class _Handler(BaseHTTPRequestHandler):
    """Reads the request, applies the fault mode, hands it to ``ConsulAPI``."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without NODELAY, Nagle plus the client's
        # delayed ACK adds ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a chatty emulator would drown test output."""

    def _serve(self) -> None:
        owner = self.server.owner
        parts = urlsplit(self.path)
        # Go's net/http routes and Consul's handlers read URL.Path, the percent-decoded path.
        path = unquote(parts.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(
            server=owner.index,
            method=self.command,
            path=path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        found = owner.api.match(path)
        owner.record(self.command, owner.api.endpoint_name(path, found[0] if found else None))
        if not owner.await_faults():
            self.close_connection = True
            return
        faults = owner.answer_faults()
        if faults.endless:
            self._write_endless(owner)
            return
        if faults.answer_status:
            resp = _status_answer(faults.answer_status, faults.retry_after)
        else:
            try:
                resp = owner.api.handle(req)
            except ServerDown:
                self.close_connection = True
                return
            except Exception as exc:  # a bug in the emulator: answer like Consul's generic 500
                traceback.print_exc()  # to the process's stderr, which SimCluster keeps
                resp = Response(500, f"consulsim internal error: {exc!r}".encode())
        if not owner.running():
            self.close_connection = True
            return
        if faults.drip_seconds > 0:
            self._write_dripped(resp, owner)
            return
        self._write(resp)

    def _write_dripped(self, resp: Response, owner: ServerListener) -> None:
        """The whole answer, status line first, one byte at a time, until the client gives up
        (or the fault is lifted: then the rest at once)."""
        real, buffer = self.wfile, io.BytesIO()
        self.wfile = buffer
        try:
            self._write(Response(resp.status, resp.body, {**resp.headers, "Connection": "close"}))
        finally:
            self.wfile = real
        self.close_connection = True
        data = buffer.getvalue()
        with contextlib.suppress(OSError):
            for offset in range(len(data)):
                pause = owner.answer_faults().drip_seconds
                if pause <= 0 or not owner.running():
                    real.write(data[offset:])
                    return
                real.write(data[offset : offset + 1])
                real.flush()
                time.sleep(pause)

    def _write_endless(self, owner: ServerListener) -> None:
        """A 200 without a length whose body never ends, as fast as the client reads, until it
        goes away or the fault is lifted."""
        self.close_connection = True
        block = b'{"Node":"' + b"x" * 65000 + b'"},'
        with contextlib.suppress(OSError):
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n["
            )
            while owner.answer_faults().endless and owner.running():
                self.wfile.write(block)

    def _write(self, resp: Response) -> None:
        self.send_response(resp.status)
        for key, value in resp.headers.items():
            self.send_header(key, value)
        body = resp.body or b""
        if resp.body is not None and resp.status != 200 and "Content-Type" not in resp.headers:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_HEAD = _serve


def _status_answer(status: int, retry_after: int) -> Response:
    """What a rate-limited server answers, before any handler runs: the texts of Consul's
    request rate limiter (agent/consul/rate/handler.go, 1.15+), whose ErrRetryElsewhere becomes
    429 and ErrRetryLater (a write on a limited leader) 503 in the HTTP layer. Consul sends no
    Retry-After; ``retry_after`` adds one, as a proxy in front might."""
    texts = {
        429: b"rate limit exceeded, try again later or against a different server",
        503: b"rate limit exceeded for operation that can only be performed by the leader, "
        b"try again later",
    }
    headers = {"Retry-After": str(retry_after)} if retry_after > 0 else {}
    return Response(status, texts.get(status, b"emulated failure"), headers)


class ServerListener:
    """The HTTP endpoint of emulated server ``index``; survives stop/start on one port."""

    def __init__(
        self,
        sim: Simulation,
        api: ConsulAPI,
        index: int,
        host: str,
        port: int,
        *,
        tls: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.sim = sim
        self.api = api
        self.index = index
        self.host = host
        self.port = port
        self.tls = tls  # server-side context: HTTPS when set
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> None:
        """Bind (the same port after the first time) and serve in a thread."""
        if self._httpd is not None:
            return
        httpd = _Server((self.host, self.port), self)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"consulsim-server-{self.index}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Close the port so that connects are refused, and cut open connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.cut_connections()

    def running(self) -> bool:
        with self.sim.cond:
            return self.sim.topology.up(self.index)

    def record(self, method: str, endpoint: str) -> None:
        with self.sim.cond:
            self.sim.stats.record(self.index, method, endpoint)

    def answer_faults(self) -> ServerFaults:
        """A copy of the server's fault flags, for the answer being written."""
        with self.sim.cond:
            return dataclasses.replace(self.sim.topology.faults[self.index])

    def await_faults(self) -> bool:
        """Hold a request while black-holed, delay it while slow; False means drop it."""
        sim = self.sim
        with sim.cond:
            while True:
                faults = sim.topology.faults[self.index]
                if not faults.up or sim.closing:
                    return False
                if not faults.blackholed:
                    break
                sim.cond.wait(0.5)
            delay = faults.slow_seconds
            if delay > 0:
                sim.cond.wait_for(
                    lambda: sim.closing or not sim.topology.faults[self.index].up, delay
                )
            return sim.topology.faults[self.index].up and not sim.closing
