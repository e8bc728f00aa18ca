"""The control port: fault injection, ACL setup and stats over HTTP with JSON bodies.

Routes (all answers are JSON; errors are 400/404 with ``{"error": "..."}``)::

    GET  /stats                         POST /stats/reset
    GET  /leader                        POST /leader/drop
    POST /servers/<i>/stop              POST /servers/<i>/start
    POST /servers/<i>/blackhole {"on": true|false}
    POST /servers/<i>/slow      {"seconds": 1.5}
    POST /servers/<i>/status    {"status": 429, "retry_after": 5}  (status 0 serves again)
    POST /servers/<i>/drip      {"seconds": 1.0}  (one byte per second; 0 restores)
    POST /servers/<i>/endless   {"on": true|false}
    PUT  /acl  {acl config, see acl.py; {} turns ACLs off}
    GET  /txn                           PUT /txn {"enabled": false, "server": 1, "status": 404,
                                                  "max_ops": 64}  (every key optional)
    POST /servers/<i>/noblock   {"on": true|false}  (blocking reads answered at once)
    GET  /sessions                      PUT /sessions {"session_checks": false}
    POST /snapshot                      -> {"id": n}
    POST /snapshot/restore {"id": n}    (state and indexes back to snapshot n)
    GET  /catalog                       (debug dump of every node, service, check and session)
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple

from .emulator import Emulator

_SERVER_OP = re.compile(r"^/servers/(\d+)/(stop|start|blackhole|slow|status|drip|endless|noblock)$")


class ControlServer(ThreadingHTTPServer):
    """HTTP server for the control API of one ``Emulator``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        super().__init__(address, _ControlHandler)
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="consulsim-control",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _ControlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ControlServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silent, like the API ports."""

    def _body(self) -> Dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        data = json.loads(self.rfile.read(length) or b"{}")
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        return data

    def _answer(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self) -> None:
        try:
            status, obj = self._route(self.command, self.path.split("?", 1)[0], self._body())
        except (ValueError, KeyError, TypeError) as exc:
            status, obj = 400, {"error": str(exc)}
        self._answer(status, obj)

    def _route(self, method: str, path: str, body: Dict[str, Any]) -> Tuple[int, Any]:
        emu = self.server.emulator
        if path == "/stats" and method == "GET":
            return 200, emu.sim.snapshot_stats()
        if path == "/stats/reset" and method == "POST":
            emu.sim.reset_stats()
            return 200, {"ok": True}
        if path == "/leader" and method == "GET":
            return 200, {"leader": emu.leader()}
        if path == "/leader/drop" and method == "POST":
            return 200, {"dropped": emu.drop_leader()}
        if path == "/acl" and method in ("PUT", "POST"):
            emu.set_acl(body)
            return 200, {"ok": True, "enabled": bool(body)}
        if path == "/txn" and method == "GET":
            return 200, emu.txn_config()
        if path == "/txn" and method in ("PUT", "POST"):
            if "max_ops" in body:
                emu.set_txn_max_ops(int(body["max_ops"]))
            if "enabled" in body:
                server = body.get("server")
                emu.set_txn(
                    bool(body["enabled"]),
                    None if server is None else int(server),
                    int(body.get("status", 404)),
                )
            return 200, emu.txn_config()
        if path == "/catalog" and method == "GET":
            return 200, emu.catalog()
        if path == "/sessions" and method == "GET":
            return 200, emu.sessions_config()
        if path == "/sessions" and method in ("PUT", "POST"):
            if "session_checks" in body:
                emu.set_session_checks(bool(body["session_checks"]))
            return 200, emu.sessions_config()
        if path == "/snapshot" and method == "POST":
            return 200, {"id": emu.snapshot_save()}
        if path == "/snapshot/restore" and method == "POST":
            emu.snapshot_restore(int(body["id"]))
            return 200, {"ok": True}
        match = _SERVER_OP.match(path)
        if match and method == "POST":
            i, op = int(match.group(1)), match.group(2)
            if op == "stop":
                emu.stop_server(i)
            elif op == "start":
                emu.start_server(i)
            elif op == "blackhole":
                emu.blackhole(i, bool(body.get("on", True)))
            elif op == "status":
                emu.answer_status(i, int(body["status"]), int(body.get("retry_after", 0)))
            elif op == "drip":
                emu.drip(i, float(body["seconds"]))
            elif op == "endless":
                emu.endless(i, bool(body.get("on", True)))
            elif op == "noblock":
                emu.no_block(i, bool(body.get("on", True)))
            else:
                emu.slow(i, float(body["seconds"]))
            return 200, {"ok": True}
        return 404, {"error": f"no control route {method} {path}"}

    do_GET = do_POST = do_PUT = _serve
