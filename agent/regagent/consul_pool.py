"""Talks to the Consul servers: one explicit client per server, sticky, with cool-down.

Failover policy (design decision 6), applied to every call in one place:
- connection errors, timeouts and 5xx answers move on to the next server and put the failed one
  in a cool-down that doubles each time (with jitter) up to `cooldown_max`;
- `No cluster leader` is a cluster state, not the server's fault: try the others, then give up
  for this cycle without cooling anyone down;
- 4xx answers (bad request, ACL denied) are raised at once: another server would say the same.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple, TypeVar, Union

import consul
import requests
import structlog
import urllib3
from consul.base import (
    ACLDisabled,
    ACLPermissionDenied,
    BadRequest,
    ClientError,
    ConsulException,
)

from regagent.config.model import ConsulConfig
from regagent.errors import ConsulRefused, ConsulUnreachable

log = structlog.get_logger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]

# python-consul2 lets these override constructor arguments; the pool must not be redirected.
_CLIENT_ENV = ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY")


class UnexpectedAnswer(ConsulException):  # type: ignore[misc]
    """The server answered, but not as a Consul API would (404 page, HTML, wrong JSON shape):
    a misconfigured address or a proxy in the way. Treated like a failed server."""


# Consul answers a request it rejects on validation with 500, not 400 (consul-api.md 1.1):
# these are the request's fault, so another server would refuse it too.
_VALIDATION_ERRORS = (
    "Invalid Service Meta",
    "Invalid service address",
    "Invalid check",
    "Must provide",
    "Missing service registration",
    "Unknown service ID",
    "Unknown check ID",
    "Bad node ID",
    "doesn't match register request node",
)


class NoClusterLeader(ConsulUnreachable):
    """Servers answer but none knows a leader: writes wait for the next cycle."""


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


@dataclass(frozen=True)
class Backoff:
    """Exponential cool-down with jitter, so ten thousand hosts do not retry in step."""

    initial: float
    maximum: float
    jitter: float = 0.2

    def delay(self, failures: int, rng: Callable[[], float] = random.random) -> float:
        base = min(self.maximum, self.initial * 2.0 ** max(0, failures - 1))
        return base * (1 - self.jitter + 2 * self.jitter * rng())


def split_hostport(address: str) -> Tuple[str, int]:
    """`host:port` or `[v6]:port` to (host-for-a-URL, port)."""
    host, _, port = address.rpartition(":")
    return host, int(port)


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


def _ssl_cause(exc: BaseException) -> Optional[ssl.SSLError]:
    """The `ssl` error under requests' and urllib3's wrappers, if there is one."""
    seen: Set[int] = set()
    pending: List[object] = [exc]
    while pending:
        item = pending.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLError):
            return item
        # urllib3's MaxRetryError keeps the cause in `.reason`; the others in args or chaining.
        pending += [getattr(item, "reason", None), *item.args, item.__cause__, item.__context__]
    return None


# OpenSSL's "[SSL: REASON_CODE] text (_ssl.c:1006)" without the codes around the text.
_SSL_TEXT = re.compile(r"^(?:\[[^\]]*\]\s*)?(?P<text>.*?)(?:\s*\(_ssl\.c:\d+\))?$")

# Alerts a server sends about the client certificate, in words a person can act on.
_CLIENT_CERT_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server rejected the client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the client certificate's CA",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server says the client certificate has expired",
}


def _describe_ssl(err: ssl.SSLError) -> str:
    """`TLS error: <what>` in OpenSSL's words, minus its codes, with a hint for alerts."""
    if isinstance(err, ssl.SSLCertVerificationError):
        detail = str(err.verify_message or "").rstrip(".")
        return "TLS error: certificate verify failed" + (f" ({detail})" if detail else "")
    if isinstance(err, ssl.SSLEOFError):
        return "TLS error: the server closed the connection unexpectedly (EOF during TLS)"
    raw = err.args[1] if len(err.args) > 1 and isinstance(err.args[1], str) else str(err)
    match = _SSL_TEXT.match(raw.strip())
    text = match.group("text") if match else raw.strip()
    hint = _CLIENT_CERT_ALERTS.get(str(getattr(err, "reason", "") or ""))
    return f"TLS error: {hint} ({text})" if hint else f"TLS error: {text}"


def describe_failure(exc: BaseException) -> str:
    """One line: what went wrong talking to a server, without a requests traceback."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "no answer (read timed out)"
    ssl_error = _ssl_cause(exc)
    if ssl_error is not None:
        return _describe_ssl(ssl_error)
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        if "Connection refused" in text:
            return "connection refused"
        return "connection failed"
    return str(exc).strip()


def _is_no_leader(exc: BaseException) -> bool:
    return isinstance(exc, ConsulException) and "No cluster leader" in str(exc)


def _refusal(exc: BaseException) -> Optional[Tuple[int, str]]:
    """(status, Consul's message) for a 4xx answer, else None."""
    if isinstance(exc, ACLPermissionDenied):
        return 403, str(exc)
    if isinstance(exc, ACLDisabled):
        return 401, str(exc)
    if isinstance(exc, (BadRequest, ClientError)):
        code, _, message = str(exc).partition(" ")
        return (int(code), message) if code.isdigit() else (400, str(exc))
    if type(exc) is ConsulException and any(text in str(exc) for text in _VALIDATION_ERRORS):
        code, _, message = str(exc).partition(" ")
        return (int(code), message) if code.isdigit() else (500, str(exc))
    return None


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
        client_factory: Callable[[str, ConsulConfig, Optional[str]], Any] = make_client,
    ) -> None:
        self.config = config
        self.clock = clock
        self.backoff = Backoff(config.cooldown_initial, config.cooldown_max)
        self.servers: List[ServerState] = [
            ServerState(address, client_factory(address, config, token))
            for address in config.servers
        ]
        self.current = 0

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
            raise ConsulUnreachable(
                f"no Consul server available for {what}: all {len(self.servers)} are cooling "
                f"down after failures (next retry in {max(wait, 0):.0f}s)"
            )
        errors: Dict[str, List[str]] = {}  # reason -> servers, so one cause reads once
        no_leader = False
        for index in candidates:
            server = self.servers[index]
            server.requests += 1
            try:
                result = operation(server.client)
            except Exception as exc:
                refusal = _refusal(exc)
                if refusal is not None:
                    server.last_error = f"{refusal[0]} {refusal[1]}"
                    raise ConsulRefused(server.address, refusal[0], refusal[1]) from None
                if _is_no_leader(exc):
                    no_leader = True
                    server.last_error = "no cluster leader"
                    errors.setdefault("no cluster leader", []).append(server.address)
                    continue
                if not isinstance(exc, (requests.exceptions.RequestException, ConsulException)):
                    raise
                self._cool_down(server, describe_failure(exc), what)
                errors.setdefault(server.last_error, []).append(server.address)
                continue
            self._succeeded(index)
            return result
        detail = "; ".join(f"{', '.join(where)}: {reason}" for reason, where in errors.items())
        if no_leader:
            raise NoClusterLeader(f"{what} failed: the Consul cluster has no leader ({detail})")
        raise ConsulUnreachable(f"no Consul server reachable for {what} ({detail})")

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
        delay = self.backoff.delay(server.failures)
        server.cooldown_until = self.clock() + delay
        server.last_error = error
        log.warning(
            "consul_server_failed",
            server=server.address,
            error=error,
            during=what,
            cooldown_s=round(delay, 1),
        )
