"""One emulated server's HTTP port, with the transport faults tests inject.

* stopped: the listening socket is closed (connection refused) and open connections are cut;
  ``start`` binds the same port again;
* black-holed: connections are accepted and requests read, but never answered;
* slow: every answer is delayed by a fixed number of seconds.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Set, Tuple
from urllib.parse import parse_qs, urlsplit

from .http_api import ConsulAPI, Request, Response
from .sim import ServerDown, Simulation


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers its open connections so ``stop`` can cut them."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], owner: ServerListener) -> None:
        self.owner = owner
        self.connections: Set[socket.socket] = set()
        self.conn_lock = threading.Lock()
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
                conn.shutdown(socket.SHUT_RDWR)


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
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(
            server=owner.index,
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        found = owner.api.match(parts.path)
        owner.record(self.command, owner.api.endpoint_name(parts.path, found[0] if found else None))
        if not owner.await_faults():
            self.close_connection = True
            return
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
        self._write(resp)

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


class ServerListener:
    """The HTTP endpoint of emulated server ``index``; survives stop/start on one port."""

    def __init__(self, sim: Simulation, api: ConsulAPI, index: int, host: str, port: int) -> None:
        self.sim = sim
        self.api = api
        self.index = index
        self.host = host
        self.port = port
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

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
