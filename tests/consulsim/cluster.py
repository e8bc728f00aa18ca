"""``SimCluster``: start the emulator as a real subprocess and drive its control port.

Tests talk to the emulator only over sockets, exactly as regagent talks to Consul, so a hung
or crashed emulator can never hang the test process; ``stop()`` always kills it by pid.
Only the standard library is used here.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Dict, List, Optional, Type, Union

_REPO_ROOT = Path(__file__).resolve().parent.parent.parent

Duration = Union[str, float]


class SimClusterError(RuntimeError):
    """The emulator did not start, or a control call failed."""


def _arg(value: Duration) -> str:
    return value if isinstance(value, str) else repr(float(value))


class SimCluster:
    """A running ``python -m tests.consulsim`` and the handle to inject faults into it."""

    def __init__(
        self,
        servers: int = 3,
        *,
        bind: str = "127.0.0.1",
        wait_cap: Duration = "2s",
        default_wait: Duration = "2s",
        stagger_divisor: int = 16,
        election_delay: Duration = "0.5s",
        rpc_hold: Duration = "0.2s",
        ae_interval: Duration = "1s",
        acl: Optional[Dict[str, Any]] = None,
        datacenter: str = "dc1",
        start_timeout: float = 15.0,
        tls_cert: Optional[str] = None,
        tls_key: Optional[str] = None,
        tls_client_ca: Optional[str] = None,
        tls_ca: Optional[str] = None,
        tls_client_cert: Optional[str] = None,
        tls_client_key: Optional[str] = None,
        txn_max_ops: int = 128,
        txn: bool = True,
        session_ttl_min: Duration = "10s",
        session_checks: bool = True,
        control_bind: Optional[str] = None,
        netns: Optional[str] = None,
    ) -> None:
        """``tls_cert``/``tls_key`` turn HTTPS on (``tls_client_ca`` also requires client
        certificates); ``tls_ca`` (default: ``tls_cert`` itself) and ``tls_client_cert``/
        ``tls_client_key`` are what this handle's own ``get`` uses to talk to it.
        ``netns`` runs the emulator in that network namespace (``ip netns exec``), and
        ``control_bind`` puts its control API on another address than ``bind``."""
        self.servers = servers
        self.bind = bind
        self.acl = acl
        self.start_timeout = start_timeout
        self.scheme = "https" if tls_cert else "http"
        self._client_tls = (tls_ca or tls_cert, tls_client_cert, tls_client_key)
        self._args = [
            "--servers",
            str(servers),
            "--bind",
            bind,
            "--base-port",
            "0",
            "--control-port",
            "0",
            "--datacenter",
            datacenter,
            "--wait-cap",
            _arg(wait_cap),
            "--default-wait",
            _arg(default_wait),
            "--stagger-divisor",
            str(stagger_divisor),
            "--election-delay",
            _arg(election_delay),
            "--rpc-hold",
            _arg(rpc_hold),
            "--ae-interval",
            _arg(ae_interval),
            "--txn-max-ops",
            str(txn_max_ops),
        ]
        self._args += ["--session-ttl-min", _arg(session_ttl_min)]
        if not txn:
            self._args.append("--no-txn")
        if not session_checks:
            self._args.append("--no-session-checks")
        if control_bind:
            self._args += ["--control-bind", control_bind]
        # `ip netns exec` execs the emulator in place: the pid is still the emulator's.
        self._prefix = ["ip", "netns", "exec", netns] if netns else []
        for flag, value in (
            ("--tls-cert", tls_cert),
            ("--tls-key", tls_key),
            ("--tls-client-ca", tls_client_ca),
        ):
            if value:
                self._args += [flag, value]
        self.addresses: List[str] = []
        self.control = ""
        self.pid: Optional[int] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._stderr: Optional[IO[bytes]] = None
        self._acl_path: Optional[str] = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SimCluster:
        """Spawn the emulator and wait (bounded) for its ready line."""
        if self._proc is not None:
            raise SimClusterError("already started")
        args = list(self._args)
        if self.acl is not None:
            fd, self._acl_path = tempfile.mkstemp(prefix="consulsim-acl-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.acl, fh)
            args += ["--acl-file", self._acl_path]
        # Kept open for the process lifetime and closed in stop(): no context manager fits.
        self._stderr = tempfile.TemporaryFile(prefix="consulsim-stderr-")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [*self._prefix, sys.executable, "-m", "tests.consulsim", *args],
            cwd=_REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.pid = self._proc.pid
        lines: queue.Queue[bytes] = queue.Queue()
        stdout = self._proc.stdout
        assert stdout is not None
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=self.start_timeout)
            ready = json.loads(line)
        except (queue.Empty, ValueError):
            detail = self._stderr_text()
            self.stop()
            raise SimClusterError(
                f"consulsim did not report ready within {self.start_timeout}s: {detail}"
            ) from None
        self.addresses = list(ready["servers"])
        self.control = ready["control"]
        return self

    def stop(self) -> None:
        """Terminate the emulator by pid (SIGTERM, then SIGKILL); safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
                except ProcessLookupError:
                    pass
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._acl_path is not None:
            Path(self._acl_path).unlink(missing_ok=True)
            self._acl_path = None

    def __enter__(self) -> SimCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-2000:]

    # ------------------------------------------------------------------ addresses

    def url(self, i: int) -> str:
        """``http://host:port`` of server ``i`` (``https://`` with TLS on)."""
        return f"{self.scheme}://{self.addresses[i]}"

    def host_port(self, i: int) -> tuple[str, int]:
        host, port = self.addresses[i].rsplit(":", 1)
        return host, int(port)

    # ------------------------------------------------------------------ control

    def _control(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://{self.control}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise SimClusterError(f"{method} {path}: {exc.code} {exc.read()!r}") from None

    def stop_server(self, i: int) -> None:
        """Server ``i`` dies: connections are refused; the leader marks it failed."""
        self._control("POST", f"/servers/{i}/stop")

    def start_server(self, i: int) -> None:
        """Server ``i`` comes back on the same port with its agent state."""
        self._control("POST", f"/servers/{i}/start")

    def blackhole(self, i: int, on: bool = True) -> None:
        """Server ``i`` accepts TCP connections but never answers (or answers again)."""
        self._control("POST", f"/servers/{i}/blackhole", {"on": on})

    def slow(self, i: int, seconds: float) -> None:
        """Every answer of server ``i`` is delayed by ``seconds`` (0 restores it)."""
        self._control("POST", f"/servers/{i}/slow", {"seconds": seconds})

    def answer_status(self, i: int, status: int, retry_after: int = 0) -> None:
        """Every request to server ``i`` is answered ``status`` (429, 503, ...; 0 serves again),
        with ``Retry-After: retry_after`` if it is > 0."""
        self._control(
            "POST", f"/servers/{i}/status", {"status": status, "retry_after": retry_after}
        )

    def drip(self, i: int, seconds: float = 1.0) -> None:
        """Server ``i`` sends each answer one byte per ``seconds`` (0 restores it)."""
        self._control("POST", f"/servers/{i}/drip", {"seconds": seconds})

    def endless(self, i: int, on: bool = True) -> None:
        """Server ``i`` answers every request with a 200 whose body never ends."""
        self._control("POST", f"/servers/{i}/endless", {"on": on})

    def no_block(self, i: int, on: bool = True) -> None:
        """Server ``i`` answers every blocking read at once, whatever ``?index`` (a broken
        proxy); ``on=False`` restores blocking."""
        self._control("POST", f"/servers/{i}/noblock", {"on": on})

    def set_session_checks(self, enabled: bool) -> None:
        """Serve the ``session`` check type, or behave like a Consul older than it."""
        self._control("PUT", "/sessions", {"session_checks": enabled})

    def sessions_config(self) -> Dict[str, Any]:
        """``{"session_checks": bool, "ttl_min": s, "timers": {id: seconds left | None}}``."""
        config: Dict[str, Any] = self._control("GET", "/sessions")
        return config

    def snapshot_save(self) -> int:
        """Keep a copy of the replicated state (``consul snapshot save``); returns its id."""
        number: int = self._control("POST", "/snapshot")["id"]
        return number

    def snapshot_restore(self, number: int) -> None:
        """Put the state and every index back to snapshot ``number``: indexes go backwards and
        blocked reads return at once, as after ``consul snapshot restore``."""
        self._control("POST", "/snapshot/restore", {"id": number})

    def set_txn(self, enabled: bool, server: Optional[int] = None, status: int = 404) -> None:
        """Serve /v1/txn or refuse it (on ``server``, or every server) with ``status`` and
        an empty body; 404 is what a Consul before 0.7 answers."""
        body: Dict[str, Any] = {"enabled": enabled, "status": status}
        if server is not None:
            body["server"] = server
        self._control("PUT", "/txn", body)

    def set_txn_max_ops(self, max_ops: int) -> None:
        """Operations allowed in one /v1/txn: 128 (Consul >= 1.14) or 64 (0.7 to 1.13)."""
        self._control("PUT", "/txn", {"max_ops": max_ops})

    def txn_config(self) -> Dict[str, Any]:
        """``{"max_ops", "max_req_len", "refusal": [status per server, 0 = served]}``."""
        config: Dict[str, Any] = self._control("GET", "/txn")
        return config

    def drop_leader(self) -> Optional[int]:
        """The leader steps down; another is elected after the election delay if possible."""
        dropped: Optional[int] = self._control("POST", "/leader/drop")["dropped"]
        return dropped

    def leader(self) -> Optional[int]:
        """Index of the current leader, or None while there is none."""
        leader: Optional[int] = self._control("GET", "/leader")["leader"]
        return leader

    def wait_for_leader(self, timeout: float = 10.0) -> int:
        """Poll until a leader exists; raises SimClusterError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                return leader
            time.sleep(0.05)
        raise SimClusterError(f"no leader after {timeout}s")

    def stats(self) -> Dict[str, Any]:
        """Request counters, write counters and indexes (shape: README.md)."""
        stats: Dict[str, Any] = self._control("GET", "/stats")
        return stats

    def reset_stats(self) -> None:
        """Zero request and write counters; indexes are left alone."""
        self._control("POST", "/stats/reset")

    def set_acl(self, config: Optional[Dict[str, Any]]) -> None:
        """Replace the ACL configuration; None or {} turns ACLs off."""
        self._control("PUT", "/acl", config or {})

    def catalog(self) -> Dict[str, Any]:
        """Every node, service and check (debug view, not a Consul endpoint)."""
        dump: Dict[str, Any] = self._control("GET", "/catalog")
        return dump

    # ------------------------------------------------------------------ Consul helpers

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        """Client-side TLS that trusts the servers (and presents the client certificate, if
        one was given); None with TLS off."""
        if self.scheme != "https":
            return None
        ca_file, cert_file, key_file = self._client_tls
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
        return context

    def get(self, i: int, path: str, token: str = "") -> Any:
        """GET a Consul API path on server ``i`` and decode the JSON answer."""
        headers = {"X-Consul-Token": token} if token else {}
        req = urllib.request.Request(self.url(i) + path, headers=headers)
        with urllib.request.urlopen(req, timeout=10, context=self.ssl_context()) as resp:
            return json.loads(resp.read())

    def live_server(self) -> int:
        """The first server that is up (per the control port's stats)."""
        for i, server in enumerate(self.stats()["servers"]):
            if server["up"] and not server["blackholed"]:
                return i
        raise SimClusterError("no server is up")

    def catalog_node_services(self, node: str, server: Optional[int] = None) -> Any:
        """``/v1/catalog/node/<node>?stale`` from a live server: None for an unknown node."""
        i = self.live_server() if server is None else server
        return self.get(i, f"/v1/catalog/node/{urllib.parse.quote(node)}?stale")
