"""Talks to the Consul servers: one explicit client per server, with cool-down, failover,
latency-aware preference and hedged reads (the threads of those: `regagent.consul.hedge`).

Failover (design decision 6), applied to every call in one place, with the numbers from
`regagent.consul.retry.RetryPolicy`:
- connection errors, timeouts, answers that are too slow or too large, 5xx, 429 and 503, and
  answers of the wrong shape (the operation passed to `call` parses inside the call) move on to
  the next server and put the failed one in a cool-down that doubles each time (with jitter) up
  to `cooldown_max`;
- `No cluster leader` is a cluster state, not the server's fault: try the others, then give up
  for this cycle without cooling anyone down;
- 4xx answers (bad request, ACL denied), Consul's 500 validation errors and its 500 for an
  unknown datacenter are raised at once: another server would say the same (classification in
  answers.py);
- with every server cooling down, the server whose cool-down ends first is still asked once per
  cycle (`new_cycle`, `policy.early_tries_per_cycle`): after a full outage, the first cycle
  after the heal finds it, instead of waiting out cool-downs of up to `cooldown_max`.

Which server first (design decision 14): each host has a home server chosen from its node name
(`retry.start_index`), so a fleet spreads over the servers; a host that failed over goes back
home once the home server's cool-down is over. A server whose latency estimate is markedly worse
than a peer's is demoted (asked last) for a while. Reads (`call(..., hedge=True)`) get a short
head start on one server and are then also sent to the next: the first good answer wins, with at
most one extra request. Writes are never sent twice at once.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, TypeVar

import structlog

from regagent.config.model import ConsulConfig
from regagent.consul.answers import (
    ConsulError,
    Outcome,
    ServerBusy,
    classify_refusal,
    describe_failure,
    is_no_leader,
)
from regagent.consul.credentials import Credentials
from regagent.consul.hedge import Attempt, HedgedReads
from regagent.consul.retry import RetryPolicy, Rng, server_order
from regagent.consul.transport import BoundedHTTPClient, ConsulClient, RequestLimits, TLSOptions
from regagent.errors import ConsulRefused, ConsulUnreachable, NoClusterLeader
from regagent.rules import split_hostport

log = structlog.get_logger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
# (server address, outcome, seconds) after each request, hedged ones included. Metrics and the
# daemon's heartbeat listen here; called under the pool's lock, so it must be quick and must not
# call back into the pool.
RequestObserver = Callable[[str, Outcome, float], None]


@dataclass
class ServerState:
    """What the pool knows about one server; shown by `regagent status`."""

    address: str
    client: Any  # transport.ConsulClient, or a test's stand-in
    failures: int = 0
    cooldown_until: float = 0.0
    last_error: str = ""
    requests: int = 0
    latency: Optional[float] = None  # EWMA of answered requests, seconds
    samples: int = 0
    slow_until: float = 0.0  # demoted (asked last) until then
    in_flight: int = 0  # hedged requests still waiting for their answer
    last_outcome: Optional[Outcome] = None  # of the last request judged; None: not asked yet

    def cooling(self, now: float) -> bool:
        return now < self.cooldown_until

    def demoted(self, now: float) -> bool:
        return now < self.slow_until or self.in_flight > 0


def make_client(
    address: str, config: ConsulConfig, token: Optional[str], policy: RetryPolicy
) -> ConsulClient:
    """A client bound to exactly this server, token, datacenter and TLS settings, every
    request bounded by `policy`'s timeouts, deadline and answer cap. An IPv6 server is written
    `[v6]:port`; the connection takes the bare address (http.client brackets it again in the
    Host header, and TLS then checks the certificate's IP SAN against it)."""
    host, port = split_hostport(address)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    limits = RequestLimits(
        connect_timeout=policy.connect_timeout,
        read_timeout=policy.read_timeout,
        deadline=policy.call_deadline,
        max_bytes=policy.max_answer_bytes,
    )
    tls = TLSOptions(
        verify=config.tls.verify,
        ca_file=config.tls.ca_file or None,
        cert_file=config.tls.cert_file or None,
        key_file=config.tls.key_file or None,
    )
    http = BoundedHTTPClient(host, port, config.scheme, limits=limits, tls=tls)
    return ConsulClient(http, token, config.datacenter)


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
        leader = server.client.leader()
    except Exception as exc:  # reported, never raised: status must show every server
        return ServerReport(server.address, False, None, describe_failure(exc), None)
    latency = round((time.monotonic() - started) * 1000)
    if not isinstance(leader, str):
        return ServerReport(server.address, False, None, "unexpected answer", latency)
    return ServerReport(
        server.address, True, leader or None, None if leader else "no cluster leader", latency
    )


# A client for (server address, configuration, token, the pool's policy): `make_client`.
ClientFactory = Callable[[str, ConsulConfig, Optional[str], RetryPolicy], Any]

# A request's judgement: None for a success, else the reason it failed.
_Failed = Optional[str]


class ServerPool:
    """Runs Consul calls against the preferred usable server, failing over as described above."""

    def __init__(
        self,
        config: ConsulConfig,
        token: Optional[str] = None,
        clock: Clock = time.monotonic,
        *,
        client_factory: ClientFactory = make_client,
        policy: Optional[RetryPolicy] = None,
        rng: Rng = random.random,
        observer: Optional[RequestObserver] = None,
        credentials: Optional[Credentials] = None,
    ) -> None:
        self.credentials = credentials  # None: the token and TLS files are read once
        self.observer = observer
        self.clock = clock
        self.rng = rng
        self.policy = policy or RetryPolicy.from_consul(config)
        self.servers: List[ServerState] = [
            ServerState(address, client_factory(address, config, token, self.policy))
            for address in config.servers
        ]
        if credentials is not None:
            credentials.attach([server.client for server in self.servers])
        if not config.tls.verify and config.scheme == "https":
            # Once per pool (per configuration loaded), not once per request.
            log.warning("consul_tls_verify_off", hint="set consul.tls.ca_file instead")
        self.current = 0
        self.home = 0
        self.order = list(range(len(self.servers)))  # failover order after the home server
        self._placed = False
        self._early_tries = 0  # left in this cycle; each `new_cycle` grants the policy's
        # Hedged reads finish in threads of their own: every change to a ServerState and to
        # `current` happens under this lock.
        self._lock = threading.RLock()
        self.hedged = HedgedReads(self._lock, clock, self._judge_late)
        # Capabilities of the cluster found out once per process (e.g. whether /v1/txn is
        # served); kept across a reload by `adopt`.
        self.capabilities: Dict[str, bool] = {}

    def place(self, node_name: str) -> None:
        """Makes this host's home server the one its node name picks (`retry.start_index`);
        the server in use changes only if nothing was carried over from a previous pool."""
        with self._lock:
            self.order = server_order(node_name, len(self.servers))
            self.home = self.order[0]
            if not self._placed:
                self.current = self.home
                self._placed = True

    def adopt(self, previous: ServerPool) -> None:
        """Keeps what a reload must not forget: cool-downs, failure counts, latency, the server
        in use and the cluster's capabilities, for every server that is still configured."""
        known = {server.address: server for server in previous.servers}
        for server in self.servers:
            old = known.get(server.address)
            if old is not None:
                server.failures = old.failures
                server.cooldown_until = old.cooldown_until
                server.last_error = old.last_error
                server.latency = old.latency
                server.last_outcome = old.last_outcome
                server.samples = old.samples
                server.slow_until = old.slow_until
        addresses = [server.address for server in self.servers]
        if previous.current_server.address in addresses:
            self.current = addresses.index(previous.current_server.address)
            self._placed = True
        self.capabilities = dict(previous.capabilities)

    @property
    def current_server(self) -> ServerState:
        return self.servers[self.current]

    def _candidates(self) -> List[int]:
        """Usable servers, best first: home if it is usable, else the last good one, then the
        rest in this host's order; demoted (slow, or still owing a hedged answer) ones last."""
        now = self.clock()
        home = self.servers[self.home]
        first = self.current
        if not home.cooling(now) and not home.demoted(now):
            first = self.home
        order = [first] + [i for i in self.order if i != first]
        live = [i for i in order if not self.servers[i].cooling(now)]
        return sorted(live, key=lambda i: self.servers[i].demoted(now))

    def new_cycle(self) -> None:
        """A sync cycle begins: it may ask a cooling server early again (see `_early_try`),
        and a rotated token or TLS file is taken in (`regagent.consul.credentials`)."""
        if self.credentials is not None:
            self.credentials.refresh()
        with self._lock:
            self._early_tries = self.policy.early_tries_per_cycle

    def _early_try(self) -> List[int]:
        """With every server cooling down: the one whose cool-down ends first, if this cycle
        has an early try left; else nobody."""
        if self._early_tries <= 0 or not self.servers:
            return []
        self._early_tries -= 1
        index = min(range(len(self.servers)), key=lambda i: self.servers[i].cooldown_until)
        server = self.servers[index]
        log.debug(
            "consul_server_early_try",
            server=server.address,
            cooldown_left_s=round(max(0.0, server.cooldown_until - self.clock()), 1),
        )
        return [index]

    def call(
        self,
        what: str,
        operation: Callable[[Any], T],
        *,
        hedge: bool = False,
        blocking: bool = False,
    ) -> T:
        """`operation(client)` on a live server; raises ConsulUnreachable/ConsulRefused.

        `operation` should parse what it reads, so that a malformed answer raises
        UnexpectedAnswer inside the call and counts against the server that sent it.
        `hedge=True` (reads only) also sends the request to the next server if the first has
        not answered within `policy.hedge_delay`; never for writes. `blocking=True`: a blocking
        query (`regagent.consul.node_watch`), from a thread of its own; its answer takes as long
        as the server holds it, so an answer neither feeds the latency estimate nor reaches the
        observer, and it never takes a cycle's early try. Failures cool the server down, fail
        over and reach the observer as for any call."""
        operation = self._with_credentials(operation)
        with self._lock:
            candidates = self._candidates() or ([] if blocking else self._early_try())
        if not candidates:
            wait = min(s.cooldown_until for s in self.servers) - self.clock()
            causes = "; ".join(f"{s.address}: {s.last_error}" for s in self.servers)
            raise ConsulUnreachable(
                f"no Consul server available for {what}: all {len(self.servers)} are cooling "
                f"down after failures (next retry in the next cycle or in {max(wait, 0):.0f}s; "
                f"{causes})"
            )
        errors: Dict[str, List[str]] = {}  # reason -> servers, so one cause reads once
        no_leader = False
        pending = list(candidates)
        while pending:
            if hedge and len(pending) > 1:
                with self._lock:
                    head_start = self.policy.hedge_delay(self.servers[pending[0]].latency)
                started, attempts = self.hedged.race(
                    operation, self.servers, pending[0], pending[1], head_start
                )
            else:
                started = attempts = [self._attempt(operation, pending[0])]
            for attempt in started:
                pending.remove(attempt.index)
            for attempt in attempts:
                failed = self._judge(attempt, what, timed=not blocking)
                if failed is None:
                    self.hedged.leave([a for a in started if a not in attempts])
                    return attempt.result  # type: ignore[no-any-return]
                if failed == "no cluster leader":
                    no_leader = True
                errors.setdefault(failed, []).append(self.servers[attempt.index].address)
            if len(started) > 1:
                hedge = False  # at most one extra request at a time, once per call
        detail = "; ".join(f"{', '.join(where)}: {reason}" for reason, where in errors.items())
        if no_leader:
            raise NoClusterLeader(f"{what} failed: the Consul cluster has no leader ({detail})")
        raise ConsulUnreachable(f"no Consul server reachable for {what} ({detail})")

    def _with_credentials(self, operation: Callable[[Any], T]) -> Callable[[Any], T]:
        """`operation`, sent once more on the same server when it failed for want of a
        credential that has just been rotated, here or by another thread while it was in
        flight (`Credentials.retry_after`): the server is judged on the second answer only."""
        credentials = self.credentials
        if credentials is None:
            return operation

        def with_credentials(client: Any) -> T:
            sent_at = credentials.generation
            try:
                result = operation(client)
            except Exception as exc:
                if not credentials.retry_after(exc, sent_at):
                    raise
                log.info("consul_request_resent", reason="credential re-read")
                try:
                    result = operation(client)
                except Exception as again:
                    credentials.retry_after(again)  # only to say once what is refused
                    raise
            credentials.worked()
            return result

        return with_credentials

    def _attempt(self, operation: Callable[[Any], Any], index: int) -> Attempt:
        """Runs the request in the calling thread."""
        server = self.servers[index]
        with self._lock:
            server.requests += 1
        attempt = Attempt(index, self.clock())
        try:
            attempt.result = operation(server.client)
        except Exception as exc:
            attempt.error = exc
        attempt.done = True
        return attempt

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no hedged read is still owed an answer (each is bounded by the
        transport's deadline); False if some still are after `timeout`."""
        return self.hedged.wait_idle(self.servers, timeout)

    def _judge_late(self, attempt: Attempt) -> None:
        """The outcome of a hedged read nobody waits for any more: it still counts (a timeout
        cools the server down, an answer feeds its latency estimate), but never raises."""
        with contextlib.suppress(Exception):
            self._judge(attempt, "hedged read", adopt=False)

    def _judge(
        self, attempt: Attempt, what: str, *, adopt: bool = True, timed: bool = True
    ) -> _Failed:
        """None if the attempt succeeded (the server becomes the one in use, if `adopt`);
        otherwise the reason, the server cooled down unless the cluster has no leader.
        Raises ConsulRefused for a refusal another server would repeat. `timed` False: a
        blocking query, whose duration says nothing of the server (see `call`)."""
        with self._lock:
            server = self.servers[attempt.index]
            exc = attempt.error
            if exc is None:
                if timed:
                    self._record_latency(attempt.index, self.clock() - attempt.started)
                self._succeeded(attempt.index, adopt=adopt)
                self._observe(server, Outcome.SUCCESS, attempt, timed)
                return None
            refusal = classify_refusal(exc, getattr(server.client, "dc", None))
            if refusal is not None:
                server.last_error = f"{refusal[0]} {refusal[1]}"
                self._observe(server, Outcome.REFUSED, attempt, timed)
                raise ConsulRefused(server.address, refusal[0], refusal[1]) from None
            if is_no_leader(exc):
                server.last_error = "no cluster leader"
                self._observe(server, Outcome.NO_LEADER, attempt, timed)
                return server.last_error
            if not isinstance(exc, (ConsulError, OSError)):
                raise exc  # a bug, not the server
            retry_after = exc.retry_after if isinstance(exc, ServerBusy) else None
            self._cool_down(server, describe_failure(exc), what, retry_after)
            self._observe(server, Outcome.FAILURE, attempt, timed)
            return server.last_error

    def _observe(
        self, server: ServerState, outcome: Outcome, attempt: Attempt, timed: bool = True
    ) -> None:
        server.last_outcome = outcome
        if self.observer is None or (not timed and outcome is Outcome.SUCCESS):
            return  # a blocking query's answer: its duration is the server's wait
        try:
            self.observer(server.address, outcome, self.clock() - attempt.started)
        except Exception:  # an observer must never break a Consul call
            log.debug("request_observer_failed", exc_info=True)

    def _record_latency(self, index: int, seconds: float) -> None:
        """Feeds the server's EWMA and demotes it if it is markedly slower than a peer."""
        server = self.servers[index]
        server.latency = self.policy.latency_estimate(server.latency, seconds)
        server.samples += 1
        now = self.clock()
        peers = [
            s.latency
            for i, s in enumerate(self.servers)
            if i != index and not s.cooling(now) and not s.demoted(now)
        ]
        if self.policy.is_slow(server.latency, server.samples, peers):
            delay = self.policy.slow_demotion(self.rng)
            server.slow_until = now + delay
            log.info(
                "consul_server_slow",
                server=server.address,
                latency_ms=round(server.latency * 1000),
                demoted_s=round(delay),
            )
            # Measured afresh when it is asked again, so an old estimate cannot keep it last.
            server.latency, server.samples = None, 0
            if index == self.current:
                others = [i for i in self._candidates() if i != index]
                if others:
                    self.current = others[0]

    def move_on(self, reason: str) -> bool:
        """Prefer another available server from now on (the current one answered, but
        uselessly: it is asked last for `cooldown_initial`); False when there is no other."""
        with self._lock:
            server = self.current_server
            server.last_error = reason
            candidates = [i for i in self._candidates() if i != self.current]
            if not candidates:
                return False
            server.slow_until = max(server.slow_until, self.clock() + self.policy.cooldown_initial)
            self.current = candidates[0]
            return True

    def survey(self) -> List[ServerReport]:
        """Asks every server, in parallel, for its leader; unreachable ones start cooling down
        so the reads that follow do not pay their timeout a second time."""
        with ThreadPoolExecutor(max_workers=len(self.servers)) as executor:
            reports = list(executor.map(_ask_leader, self.servers))
        with self._lock:
            for index, report in enumerate(reports):
                server = self.servers[index]
                if report.reachable:
                    server.last_error = report.error or ""
                else:
                    self._cool_down(server, report.error or "unreachable", "status")
        return reports

    def _succeeded(self, index: int, *, adopt: bool = True) -> None:
        server = self.servers[index]
        if server.failures:
            log.info("consul_server_recovered", server=server.address)
        server.failures = 0
        server.cooldown_until = 0.0
        server.last_error = ""
        if adopt and not server.demoted(self.clock()):
            self.current = index

    def _cool_down(
        self, server: ServerState, error: str, what: str, retry_after: Optional[float] = None
    ) -> None:
        server.failures += 1
        if retry_after is None:
            delay = self.policy.cooldown(server.failures, self.rng)
        else:
            delay = self.policy.busy_cooldown(server.failures, retry_after, self.rng)
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
