"""Talks to the Consul servers: one explicit client per server, sticky, with cool-down.

Failover (design decision 6), applied to every call in one place, with the numbers from
`regagent.consul.retry.RetryPolicy`:
- connection errors, timeouts and 5xx answers move on to the next server and put the failed one
  in a cool-down that doubles each time (with jitter) up to `cooldown_max`;
- `No cluster leader` is a cluster state, not the server's fault: try the others, then give up
  for this cycle without cooling anyone down;
- 4xx answers (bad request, ACL denied) and Consul's 500 validation errors are raised at once:
  another server would say the same (classification in consul_errors.py).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, TypeVar, Union

import consul
import requests
import structlog
import urllib3
from consul.base import ConsulException

from regagent.config.model import ConsulConfig
from regagent.consul.answers import classify_refusal, describe_failure, is_no_leader
from regagent.consul.retry import RetryPolicy, Rng
from regagent.errors import ConsulRefused, ConsulUnreachable, NoClusterLeader
from regagent.rules import split_hostport

log = structlog.get_logger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
# (server address, outcome, seconds) after each request: success, failure (connection error,
# timeout, 5xx), no_leader or refused. Metrics and the daemon's watchdog listen here.
RequestObserver = Callable[[str, str, float], None]

# python-consul2 lets these override constructor arguments; the pool must not be redirected.
_CLIENT_ENV = ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY")


@dataclass
class ServerState:
    """What the pool knows about one server; shown by `regagent status`."""

    address: str
    client: Any  # consul.Consul
    failures: int = 0
    cooldown_until: float = 0.0
    last_error: str = ""
    requests: int = 0

    def cooling(self, now: float) -> bool:
        return now < self.cooldown_until


@contextlib.contextmanager
def _without_client_env() -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in _CLIENT_ENV if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def make_client(address: str, config: ConsulConfig, token: Optional[str]) -> Any:
    """A python-consul2 client bound to exactly this server, token and TLS settings."""
    host, port = split_hostport(address)
    verify: Union[bool, str] = config.tls.verify
    if verify and config.tls.ca_file:
        verify = config.tls.ca_file
    cert = (config.tls.cert_file, config.tls.key_file) if config.tls.cert_file else None
    timeout = (config.connect_timeout, config.read_timeout)
    with _without_client_env():
        client = consul.Consul(
            host=host,
            port=port,
            token=token,
            scheme=config.scheme,
            dc=config.datacenter,
            verify=verify,
            cert=cert,
            timeout=timeout,
        )
    client.token = token  # belt and braces: the constructor prefers CONSUL_HTTP_TOKEN
    # requests would otherwise honour HTTP_PROXY (sending the token to a proxy), NO_PROXY,
    # REQUESTS_CA_BUNDLE and ~/.netrc: the pool talks to exactly the configured servers.
    client.http.session.trust_env = False
    if not config.tls.verify and config.scheme == "https":
        _warn_once_tls_unverified()
    return client


_tls_warning_given = False


def _warn_once_tls_unverified() -> None:
    """One structured warning instead of urllib3's two-line warning on every request."""
    global _tls_warning_given
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    if not _tls_warning_given:
        _tls_warning_given = True
        log.warning("consul_tls_verify_off", hint="set consul.tls.ca_file instead")


@dataclass(frozen=True)
class ServerReport:
    """One server as `regagent status` shows it."""

    server: str
    reachable: bool
    leader: Optional[str]
    error: Optional[str]
    latency_ms: Optional[int]


def _ask_leader(server: ServerState) -> ServerReport:
    started = time.monotonic()
    try:
        leader = server.client.status.leader()
    except Exception as exc:  # reported, never raised: status must show every server
        return ServerReport(server.address, False, None, describe_failure(exc), None)
    latency = round((time.monotonic() - started) * 1000)
    if not isinstance(leader, str):
        return ServerReport(server.address, False, None, "unexpected answer", latency)
    return ServerReport(
        server.address, True, leader or None, None if leader else "no cluster leader", latency
    )


class ServerPool:
    """Runs Consul calls against the first healthy server, failing over as described above."""

    def __init__(
        self,
        config: ConsulConfig,
        token: Optional[str] = None,
        clock: Clock = time.monotonic,
        *,
        client_factory: Callable[[str, ConsulConfig, Optional[str]], Any] = make_client,
        policy: Optional[RetryPolicy] = None,
        rng: Rng = random.random,
        observer: Optional[RequestObserver] = None,
    ) -> None:
        self.config = config
        self.observer = observer
        self.clock = clock
        self.rng = rng
        self.policy = policy or RetryPolicy(
            cooldown_initial=config.cooldown_initial,
            cooldown_max=config.cooldown_max,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
        )
        self.servers: List[ServerState] = [
            ServerState(address, client_factory(address, config, token))
            for address in config.servers
        ]
        self.current = 0

    def adopt(self, previous: ServerPool) -> None:
        """Keeps what a reload must not forget: cool-downs, failure counts and the server in
        use, for every server that is still configured."""
        known = {server.address: server for server in previous.servers}
        for server in self.servers:
            old = known.get(server.address)
            if old is not None:
                server.failures = old.failures
                server.cooldown_until = old.cooldown_until
                server.last_error = old.last_error
        addresses = [server.address for server in self.servers]
        if previous.current_server.address in addresses:
            self.current = addresses.index(previous.current_server.address)

    @property
    def current_server(self) -> ServerState:
        return self.servers[self.current]

    def _candidates(self) -> List[int]:
        now = self.clock()
        order = [(self.current + i) % len(self.servers) for i in range(len(self.servers))]
        return [i for i in order if not self.servers[i].cooling(now)]

    def call(self, what: str, operation: Callable[[Any], T]) -> T:
        """`operation(client)` on a live server; raises ConsulUnreachable/ConsulRefused."""
        candidates = self._candidates()
        if not candidates:
            wait = min(s.cooldown_until for s in self.servers) - self.clock()
            causes = "; ".join(f"{s.address}: {s.last_error}" for s in self.servers)
            raise ConsulUnreachable(
                f"no Consul server available for {what}: all {len(self.servers)} are cooling "
                f"down after failures (next retry in {max(wait, 0):.0f}s; {causes})"
            )
        errors: Dict[str, List[str]] = {}  # reason -> servers, so one cause reads once
        no_leader = False
        for index in candidates:
            server = self.servers[index]
            server.requests += 1
            started = self.clock()
            try:
                result = operation(server.client)
            except Exception as exc:
                refusal = classify_refusal(exc)
                if refusal is not None:
                    server.last_error = f"{refusal[0]} {refusal[1]}"
                    self._observe(server, "refused", started)
                    raise ConsulRefused(server.address, refusal[0], refusal[1]) from None
                if is_no_leader(exc):
                    no_leader = True
                    server.last_error = "no cluster leader"
                    errors.setdefault("no cluster leader", []).append(server.address)
                    self._observe(server, "no_leader", started)
                    continue
                if not isinstance(exc, (requests.exceptions.RequestException, ConsulException)):
                    raise
                self._cool_down(server, describe_failure(exc), what)
                errors.setdefault(server.last_error, []).append(server.address)
                self._observe(server, "failure", started)
                continue
            self._succeeded(index)
            self._observe(server, "success", started)
            return result
        detail = "; ".join(f"{', '.join(where)}: {reason}" for reason, where in errors.items())
        if no_leader:
            raise NoClusterLeader(f"{what} failed: the Consul cluster has no leader ({detail})")
        raise ConsulUnreachable(f"no Consul server reachable for {what} ({detail})")

    def _observe(self, server: ServerState, outcome: str, started: float) -> None:
        if self.observer is None:
            return
        try:
            self.observer(server.address, outcome, self.clock() - started)
        except Exception:  # an observer must never break a Consul call
            log.debug("request_observer_failed", exc_info=True)

    def move_on(self, reason: str) -> bool:
        """Prefer the next available server from now on (the current one answered, but
        uselessly); False when there is no other to try."""
        self.current_server.last_error = reason
        candidates = [i for i in self._candidates() if i != self.current]
        if not candidates:
            return False
        self.current = candidates[0]
        return True

    def survey(self) -> List[ServerReport]:
        """Asks every server, in parallel, for its leader; unreachable ones start cooling down
        so the reads that follow do not pay their timeout a second time."""
        with ThreadPoolExecutor(max_workers=len(self.servers)) as executor:
            reports = list(executor.map(_ask_leader, self.servers))
        for index, report in enumerate(reports):
            server = self.servers[index]
            if report.reachable:
                server.last_error = report.error or ""
            else:
                self._cool_down(server, report.error or "unreachable", "status")
        return reports

    def _succeeded(self, index: int) -> None:
        server = self.servers[index]
        if server.failures:
            log.info("consul_server_recovered", server=server.address)
        server.failures = 0
        server.cooldown_until = 0.0
        server.last_error = ""
        self.current = index

    def _cool_down(self, server: ServerState, error: str, what: str) -> None:
        server.failures += 1
        delay = self.policy.cooldown(server.failures, self.rng)
        server.cooldown_until = self.clock() + delay
        server.last_error = error
        # info, not warning: failover is routine; a cycle that fails altogether is an error
        # (daemon) or the command's one-line message (sync, status).
        log.info(
            "consul_server_failed",
            server=server.address,
            error=error,
            during=what,
            cooldown_s=round(delay, 1),
        )
