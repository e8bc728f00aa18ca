"""The running emulator: the simulation, its server ports, and the fault operations.

Fault operations touch two layers at once (the simulated cluster and a real socket), so they
live here rather than in ``sim.py`` or ``listener.py``; ``control.py`` exposes them over HTTP.
"""

from __future__ import annotations

import ssl
import time
from typing import Any, Dict, List, Optional

from .http_api import ConsulAPI
from .listener import ServerListener
from .sessions import session_json
from .sim import Settings, Simulation
from .state import check_json, node_json, node_service_json


class Emulator:
    """N server ports sharing one ``Simulation``."""

    def __init__(
        self, settings: Settings, base_port: int = 0, tls: Optional[ssl.SSLContext] = None
    ) -> None:
        self.settings = settings
        self.sim = Simulation(settings)
        self.api = ConsulAPI(self.sim)
        self.tls = tls
        self.listeners = [
            ServerListener(
                self.sim, self.api, i, settings.bind, base_port + i if base_port else 0, tls=tls
            )
            for i in range(settings.servers)
        ]

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def addresses(self) -> List[str]:
        return [lst.address for lst in self.listeners]

    def start(self) -> None:
        """Bind every port, then load the server nodes into the catalog."""
        for lst in self.listeners:
            lst.start()
        self.sim.bootstrap(self.addresses)

    def shutdown(self) -> None:
        self.sim.close()
        for lst in self.listeners:
            lst.stop()

    def _check(self, i: int) -> None:
        if not 0 <= i < len(self.listeners):
            raise ValueError(f"no server {i}; servers are 0..{len(self.listeners) - 1}")

    def stop_server(self, i: int) -> None:
        """Connection refused from now on; the leader marks the server failed."""
        self._check(i)
        self.sim.stop_server(i)
        self.listeners[i].stop()

    def start_server(self, i: int) -> None:
        """Listen on the same port again, with the server's agent state intact."""
        self._check(i)
        self.listeners[i].start()
        self.sim.start_server(i)

    def blackhole(self, i: int, on: bool) -> None:
        self._check(i)
        with self.sim.cond:
            self.sim.topology.faults[i].blackholed = on
            self.sim.cond.notify_all()

    def slow(self, i: int, seconds: float) -> None:
        self._check(i)
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        with self.sim.cond:
            self.sim.topology.faults[i].slow_seconds = seconds
            self.sim.cond.notify_all()

    def answer_status(self, i: int, status: int, retry_after: int = 0) -> None:
        """Every request to server ``i`` is answered ``status`` (0 serves normally again), with a
        ``Retry-After`` header when ``retry_after`` > 0: Consul's request rate limiter (429) or
        an overloaded server or proxy (503)."""
        self._check(i)
        if status and not 400 <= status <= 599:
            raise ValueError("status must be 0 or an HTTP error status (400..599)")
        if retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        with self.sim.cond:
            self.sim.topology.faults[i].answer_status = status
            self.sim.topology.faults[i].retry_after = retry_after
            self.sim.cond.notify_all()

    def drip(self, i: int, seconds: float) -> None:
        """Server ``i`` sends its answers one byte per ``seconds`` (0 restores it)."""
        self._check(i)
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        with self.sim.cond:
            self.sim.topology.faults[i].drip_seconds = seconds
            self.sim.cond.notify_all()

    def endless(self, i: int, on: bool) -> None:
        """Server ``i`` answers every request with a 200 whose body never ends."""
        self._check(i)
        with self.sim.cond:
            self.sim.topology.faults[i].endless = on
            self.sim.cond.notify_all()

    def no_block(self, i: int, on: bool) -> None:
        """Server ``i`` answers blocking reads at once whatever ``?index`` says, like a proxy
        that strips the query or a server that ignores it."""
        self._check(i)
        with self.sim.cond:
            self.sim.topology.faults[i].no_block = on
            self.sim.cond.notify_all()

    def set_session_checks(self, enabled: bool) -> None:
        """Serve the ``session`` check type, or behave like a server older than it."""
        self.sim.set_session_checks(enabled)

    def sessions_config(self) -> Dict[str, Any]:
        """Session settings and the leader's timers: seconds left per session ID."""
        sim = self.sim
        with sim.cond:
            now = time.monotonic()
            return {
                "session_checks": sim.store.session_checks,
                "ttl_min": sim.settings.session_ttl_min,
                "timers": {
                    s["ID"]: sim.timers.remaining(s["ID"], now) for s in sim.store.all_sessions()
                },
            }

    def snapshot_save(self) -> int:
        return self.sim.snapshot_save()

    def snapshot_restore(self, number: int) -> None:
        self.sim.snapshot_restore(number)

    def set_txn(self, enabled: bool, server: Optional[int] = None, status: int = 404) -> None:
        """Serve ``/v1/txn`` or not, on one server or all; ``status`` is what a refusing
        server answers (404 with an empty body is a Consul before 0.7)."""
        if not enabled and not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400..599)")
        targets = range(len(self.listeners)) if server is None else [server]
        with self.sim.cond:
            for i in targets:
                self._check(i)
                self.sim.topology.faults[i].txn_refusal = 0 if enabled else status

    def set_txn_max_ops(self, max_ops: int) -> None:
        """The op limit of ``/v1/txn`` (128 since Consul 1.14, 64 from 0.7 to 1.13)."""
        if max_ops < 1:
            raise ValueError("max_ops must be >= 1")
        with self.sim.cond:
            self.sim.settings.txn_max_ops = max_ops

    def txn_config(self) -> Dict[str, Any]:
        """The ``/v1/txn`` settings: limits and, per server, the refusal status (0 serves)."""
        with self.sim.cond:
            return {
                "max_ops": self.sim.settings.txn_max_ops,
                "max_req_len": self.sim.settings.txn_max_req_len,
                "refusal": [f.txn_refusal for f in self.sim.topology.faults],
            }

    def drop_leader(self) -> Optional[int]:
        return self.sim.drop_leader()

    def leader(self) -> Optional[int]:
        with self.sim.cond:
            return self.sim.topology.leader

    def set_acl(self, config: Optional[Dict[str, Any]]) -> None:
        with self.sim.cond:
            self.sim.acl.configure(config)

    def catalog(self) -> Dict[str, Any]:
        """The whole catalog, for debugging a failing test (not a Consul endpoint)."""
        store = self.sim.store
        with self.sim.cond:
            return {
                "nodes": [node_json(n) for n in store.all_nodes()],
                "services": [
                    {"Node": node["Node"], **node_service_json(svc)}
                    for node, svc in store.service_rows()
                ],
                "checks": [check_json(c) for c in store.all_checks()],
                "sessions": [session_json(s) for s in store.all_sessions()],
            }
