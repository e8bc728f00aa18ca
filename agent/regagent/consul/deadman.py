"""The dead-man's switch (catalog mode): a Consul session with a TTL on the host's node, kept
alive by the daemon, and a node check of Type "session" that Consul turns critical when the
session ends — so a host that dies takes its services out of `?passing` health reads without
any agent or prober. Issue 25; research notes in the README's "The dead-man's switch".

How it works:
- The check (`CHECK_ID`) is a node check regagent owns (`regagent.nodechecks`) whose status
  Consul owns: `Definition.SessionName` names the session by its **Name** (Consul PR #22227).
  Each session gets a fresh name (`regagent:<node>:<random>`): a session left over by a killed
  process can then never flip the check of its successor when it expires.
- The planner writes the check when it is missing or names another session, as `critical`;
  `CatalogRegistrar.apply` first asks the keeper to `arm` (create or verify a session of that
  name) and, once it is live, sends the check as `passing` — what Consul itself shows when such
  a session exists — so a restart does not blip the host critical. A check written with a new
  node (no session can exist before its node) goes critical, and Consul flips it passing when
  `node_written` has the session created right after.
- A thread renews the session every TTL/3 (jittered), through a server pool of its own
  (failover, cool-downs and bounded answers apply; a second pool, since the cycle's is not
  shared between threads). Consul invalidates a session between TTL and 2 x TTL after its last
  renew (the leader's timer is 2 x TTL and restarts on every renew and on a leader election),
  so five renews in a row may fail before the host is marked dead. A renew answered 404 (the
  session was invalidated: expired during a partition, destroyed by someone, its node removed)
  makes the thread create a new session and re-point the check at once.
- An older Consul stores a `session` check but drops `Definition.SessionName` without an error
  (its Definition has its own UnmarshalJSON). The check is read back once after the first
  session; no SessionName means no session checks: the check is removed, the session
  destroyed, and the daemon keeps today's behaviour, logged once. A reload probes again (a
  rolling upgrade changes the answer).
- A planned stop (SIGTERM) disarms by default: the check is removed and the session destroyed,
  so the host keeps its last status as it always did; `consul.session.on_stop: critical` only
  destroys the session, and Consul turns the check critical at once.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Optional

import structlog

from regagent.consul.catalog import SESSION_NAME_PREFIX, node_check_body
from regagent.consul.http import WriteRequest, send
from regagent.consul.pool import ServerPool
from regagent.consul.sessions import (
    SessionRefused,
    create_session,
    destroy_session,
    node_check,
    renew_session,
)
from regagent.errors import RegagentError
from regagent.model import CRITICAL, PASSING, ActualState, NodeCheck
from regagent.nodechecks import NodeCheckClaim
from regagent.throttle import LogThrottle

log = structlog.get_logger(__name__)

CHECK_ID = "regagent:alive"
CHECK_NAME = "regagent alive (dead-man's switch)"
SESSION_TYPE = "session"
RENEWS_PER_TTL = 3  # renew every TTL/3: see the module docstring
RETRY_AFTER_FAILURE = 0.5  # of the renew pace, after a failed renew or create
STOP_BOUND = 3.0  # seconds a planned stop waits for the switch to be disarmed
ARM_BOUND_FLOOR = 1.0
JITTER = 0.1  # +/- of each renew interval, so a fleet restarted at once spreads its renews

Clock = Callable[[], float]


def default_ttl(interval: float) -> float:
    """max(30 s, 3 x the sync interval)."""
    return max(30.0, 3.0 * interval)


def check_output(ttl: float) -> str:
    """What the check says to an operator (Consul keeps it when it flips the status)."""
    return (
        f"Passing while regagent on this host renews its Consul session (TTL {ttl:g}s). "
        f"Critical means it stopped renewing for up to {2 * ttl:g}s: the host is down or cut "
        "off from Consul, or regagent was killed (or stopped with consul.session.on_stop: "
        "critical). A running regagent re-arms it within seconds of reaching Consul again."
    )


CHECK_NOTES = (
    "Dead-man's switch of regagent (Type session): Consul turns it critical when regagent's "
    "session on this node ends. A planned stop of regagent removes it."
)


@dataclass(frozen=True)
class SessionSettings:
    """What the switch needs from the configuration."""

    node: str
    ttl: float
    on_stop: str = "disarm"  # or "critical"
    enabled: bool = True
    datacenter: Optional[str] = None


@dataclass
class SessionEvents:
    """Callbacks the metrics implement; each must return at once and never raise."""

    renewed: Callable[[str], None] = lambda result: None  # success, lost, failure
    created: Callable[[], None] = lambda: None
    state: Callable[[str], None] = lambda state: None  # armed, pending, unsupported, off


def _session_check(name: str, ttl: float, status: str) -> NodeCheck:
    return NodeCheck(
        CHECK_ID,
        CHECK_NAME,
        status,
        output=check_output(ttl),
        notes=CHECK_NOTES,
        type=SESSION_TYPE,
        definition={"SessionName": name},
        consul_owns_status=True,
    )


def _new_name(node: str) -> str:
    return f"{SESSION_NAME_PREFIX}{node}:{secrets.token_hex(4)}"


class SessionKeeper:
    """The switch's state and its renewing thread. `active` False (a one-shot command): it
    only claims the check, leaving whatever the daemon keeps there as it is.

    Thread safety: the cycle (main thread) and the renewing thread meet only under `_lock`,
    which is never held during a request; every request of the switch is the thread's, through
    its own pool, so the cycle's pool is never used from two threads."""

    def __init__(
        self,
        settings: SessionSettings,
        pool: Optional[ServerPool],
        *,
        active: bool = True,
        events: Optional[SessionEvents] = None,
        clock: Clock = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.active = active and pool is not None
        self.events = events or SessionEvents()
        self.clock = clock
        self.rng = rng
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._changed = threading.Condition(self._lock)
        self.name = _new_name(settings.node)
        self.session_id: Optional[str] = None
        self.supported: Optional[bool] = None  # None: not known yet; False: an older Consul
        self._node_ready = False
        self._verify = False
        self._repoint = False
        self._arm_requests = 0
        self._arm_answers = 0
        self._next_renew = 0.0
        self._stop_action: Optional[str] = None
        self._thread: Optional[threading.Thread] = None
        self._errors = LogThrottle(600.0, clock)

    # -- configuration -----------------------------------------------------------------------

    def configure(
        self,
        settings: SessionSettings,
        pool: Optional[ServerPool],
        events: Optional[SessionEvents] = None,
    ) -> None:
        """A reload: new settings, pool and metrics; the session is kept (a new TTL applies to
        the next session), unless the node was renamed. Session-check support is probed
        again."""
        with self._lock:
            renamed = settings.node != self.settings.node
            self.settings = settings
            if events is not None:
                self.events = events
            if pool is not None:
                self.pool = pool
            if self.supported is False:
                self.supported = None
            if renamed:
                self._drop_session_locked()
                self.name = _new_name(settings.node)
        self._wake.set()

    # -- the node check (NodeCheckSource) ----------------------------------------------------

    def node_checks(self, actual: Optional[ActualState]) -> NodeCheckClaim:
        """The session check as the planner should hold it. No network."""
        owned = frozenset({CHECK_ID})
        present = None
        if actual is not None:
            present = next((c for c in actual.node_checks if c.check_id == CHECK_ID), None)
        if not self.active:  # a one-shot command: the daemon's check stays as it is
            kept = () if present is None else (replace(present, consul_owns_status=True),)
            return NodeCheckClaim(owned, kept)
        with self._lock:
            if present is not None and present.type and not present.definition.get("SessionName"):
                self._unsupported_locked("the check read back has no Definition.SessionName")
            if not self.settings.enabled or self.supported is False:
                return NodeCheckClaim(owned)  # removed if present: today's behaviour
            return NodeCheckClaim(owned, (_session_check(self.name, self.settings.ttl, CRITICAL),))

    # -- hooks of CatalogRegistrar.apply (main thread) ---------------------------------------

    def arm(self, check: NodeCheck) -> NodeCheck:
        """Before the plan writes the session check on an existing node: have a live session
        (created, or verified by a renew), then the check as Consul shows it with one:
        passing, naming that session. Waits for the thread at most a bounded time; without a
        live session the check goes as planned (critical), and `node_written` arms it."""
        if not self.active or check.check_id != CHECK_ID:
            return check
        with self._lock:
            if not self.settings.enabled or self.supported is False:
                return check
            self._arm_requests += 1
            wanted = self._arm_requests
            self._node_ready = True
        self._wake.set()
        deadline = self.clock() + self._arm_bound()
        with self._lock:
            while self._arm_answers < wanted and self._thread is not None:
                left = deadline - self.clock()
                if left <= 0:
                    break
                self._changed.wait(left)
            if self.session_id is None or self._arm_answers < wanted:
                return check
            return _session_check(self.name, self.settings.ttl, PASSING)

    def node_written(self) -> None:
        """After a successful apply: the node exists, so a session can be created now."""
        if not self.active:
            return
        with self._lock:
            self._node_ready = True
            pending = self.session_id is None or self._verify
        if pending:
            self._wake.set()

    def _arm_bound(self) -> float:
        if self.pool is None:
            return ARM_BOUND_FLOOR
        return max(ARM_BOUND_FLOOR, self.pool.policy.call_deadline)

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Starts renewing (the daemon only)."""
        if not self.active or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="regagent-session", daemon=True)
        self._thread.start()

    def stop(self, action: str, bound: float = STOP_BOUND) -> None:
        """A planned stop: `disarm` removes the check and destroys the session, `critical`
        destroys the session only (Consul turns the check critical), `halt` just stops the
        thread (deregistration follows and removes both). Waits at most `bound` seconds."""
        thread = self._thread
        if thread is None:
            return
        with self._lock:
            self._stop_action = action
        self._wake.set()
        thread.join(timeout=bound)
        if thread.is_alive():
            log.error(
                "session_stop_incomplete",
                action=action,
                bound_s=bound,
                effect="the session expires by itself: the host shows critical within 2 x TTL",
            )
        self._thread = None

    def _run(self) -> None:
        while True:
            self._wake.wait(timeout=self._delay())
            self._wake.clear()
            with self._lock:
                action = self._stop_action
            if action is not None:
                self._stop(action)
                return
            try:
                self._step()
            except Exception:  # a bug must not end the switch silently
                log.exception("session_keeper_crashed")
                self._wake.wait(timeout=5.0)

    def _delay(self) -> Optional[float]:
        with self._lock:
            if self.session_id is None:
                return None if not self._node_ready else self._pace() * RETRY_AFTER_FAILURE
            return max(0.0, self._next_renew - self.clock())

    def _pace(self) -> float:
        return self.settings.ttl / RENEWS_PER_TTL

    def _jittered(self) -> float:
        return self._pace() * (1 + JITTER * (2 * self.rng() - 1))

    def _step(self) -> None:
        with self._lock:
            pool = self.pool
            settings = self.settings
            off = not settings.enabled or self.supported is False
            session_id = self.session_id
            arm_wanted = self._arm_requests > self._arm_answers
            renew_due = session_id is not None and self.clock() >= self._next_renew
            ready = self._node_ready
        if pool is None:
            return
        if off:
            if session_id is not None:  # turned off by a reload: disarm, never flip critical
                self._disarm(pool, settings)
            self._answer_arm()
            self.events.state("unsupported" if settings.enabled else "off")
            return
        if session_id is not None and (renew_due or arm_wanted):
            session_id = self._renew(pool, session_id, settings)
        if session_id is None and (ready or arm_wanted):
            session_id = self._create(pool, settings, repoint=not arm_wanted)
        self._answer_arm()
        if session_id is not None:
            self._after_create(pool, settings)

    def _answer_arm(self) -> None:
        with self._lock:
            self._arm_answers = self._arm_requests
            self._changed.notify_all()

    def _renew(self, pool: ServerPool, session_id: str, settings: SessionSettings) -> Optional[str]:
        pool.new_cycle()  # with every server cooling down, one may be asked early (as a cycle)
        try:
            alive = renew_session(pool, session_id, settings.datacenter)
        except RegagentError as exc:
            self.events.renewed("failure")
            self._log_error("session_renew_failed", exc)
            with self._lock:
                self._next_renew = self.clock() + self._pace() * RETRY_AFTER_FAILURE
            return session_id
        if alive:
            self.events.renewed("success")
            with self._lock:
                self._next_renew = self.clock() + self._jittered()
            return session_id
        self.events.renewed("lost")
        log.warning(
            "session_lost",
            session=self.name,
            cause="Consul invalidated it (expired while unrenewed, destroyed, or its node "
            "removed); the check turned critical",
            action="creating a new session and re-pointing the check",
        )
        with self._lock:
            if self.session_id == session_id:
                self._drop_session_locked()
                self.name = _new_name(settings.node)
        self.events.state("pending")
        return None

    def _create(self, pool: ServerPool, settings: SessionSettings, repoint: bool) -> Optional[str]:
        with self._lock:
            name = self.name
        pool.new_cycle()
        try:
            session_id = create_session(
                pool, settings.node, name, settings.ttl, settings.datacenter
            )
        except RegagentError as exc:
            self._log_error("session_create_failed", exc)
            if isinstance(exc, SessionRefused) and "Missing node registration" in str(exc):
                with self._lock:
                    self._node_ready = False  # the next successful apply wakes us again
            return None
        self.events.created()
        log.info("session_created", session=name, ttl_s=settings.ttl, node=settings.node)
        with self._lock:
            self.session_id = session_id
            self._next_renew = self.clock() + self._jittered()
            self._verify = self.supported is None
            self._repoint = repoint
        self.events.state("armed" if self.supported else "pending")
        return session_id

    def _after_create(self, pool: ServerPool, settings: SessionSettings) -> None:
        """Re-point the check at a session created by the thread, and read the check back
        once to learn whether this Consul has session checks."""
        with self._lock:
            repoint, verify, name = self._repoint, self._verify, self.name
            self._repoint = False
        if repoint:
            try:
                send(pool, _check_request(settings, _session_check(name, settings.ttl, PASSING)))
            except RegagentError as exc:
                self._log_error("session_check_repoint_failed", exc)  # the next cycle does it
        if not verify:
            return
        try:
            raw = node_check(pool, settings.node, CHECK_ID)
        except RegagentError as exc:
            self._log_error("session_check_read_failed", exc)
            return
        if raw is None:
            return  # not written yet (the cycle's write failed): read back after the next
        found = (raw.get("Definition") or {}).get("SessionName")
        with self._lock:
            self._verify = False
            if found:
                self.supported = True
            else:
                self._unsupported_locked("the check read back has no Definition.SessionName")
            supported = self.supported
        if supported:
            log.info("session_check_supported", check=CHECK_ID, status=raw.get("Status"))
            self.events.state("armed")
            return
        self._disarm(pool, settings)

    def _unsupported_locked(self, why: str) -> None:
        if self.supported is False:
            return
        self.supported = False
        log.warning(
            "consul_session_checks_unavailable",
            reason=why,
            meaning="this Consul predates the 'session' check type (PR #22227, 1.20.x/1.21.x)",
            fallback="no dead-man's switch: a dead host keeps its last status, as before "
            "(probed again on reload)",
        )
        self._wake.set()

    def _disarm(self, pool: ServerPool, settings: SessionSettings) -> None:
        """Remove the check, then destroy the session (in this order: the check must not
        flip critical on the way)."""
        with self._lock:
            session_id = self.session_id
        try:
            send(pool, _check_removal(settings))
        except RegagentError as exc:
            self._log_error("session_check_removal_failed", exc)
        if session_id is not None:
            self._destroy(pool, session_id, settings)

    def _destroy(self, pool: ServerPool, session_id: str, settings: SessionSettings) -> None:
        try:
            destroy_session(pool, session_id, settings.datacenter)
        except RegagentError as exc:
            self._log_error("session_destroy_failed", exc)
            return
        with self._lock:
            if self.session_id == session_id:
                self._drop_session_locked()

    def _stop(self, action: str) -> None:
        with self._lock:
            pool, settings, session_id = self.pool, self.settings, self.session_id
            supported = self.supported
        if pool is None or session_id is None or action == "halt":
            return
        if action == "critical" and supported is not False:
            self._destroy(pool, session_id, settings)
            log.info("session_destroyed_on_stop", effect="Consul marks this host critical now")
            return
        self._disarm(pool, settings)
        log.info("session_disarmed_on_stop", effect="the host keeps its last status")

    def _drop_session_locked(self) -> None:
        self.session_id = None
        self._verify = False
        self._repoint = False

    def _log_error(self, event: str, exc: RegagentError) -> None:
        suppressed = self._errors.admit(f"{event}:{type(exc).__name__}")
        if suppressed is not None:
            log.error(event, error=str(exc), suppressed=suppressed)

    # -- for status and tests ---------------------------------------------------------------

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "session": self.session_id,
                "name": self.name,
                "supported": self.supported,
                "ttl_s": self.settings.ttl,
            }


def _check_request(settings: SessionSettings, check: NodeCheck) -> WriteRequest:
    """The check alone, on the existing node (SkipNodeUpdate: the node's address and meta
    stay as the cycle wrote them)."""
    body: Dict[str, Any] = {
        "Node": settings.node,
        "SkipNodeUpdate": True,
        "Check": node_check_body(check),
    }
    if settings.datacenter:
        body["Datacenter"] = settings.datacenter
    return WriteRequest("/v1/catalog/register", body, f"node check {CHECK_ID}", "node_check")


def _check_removal(settings: SessionSettings) -> WriteRequest:
    body: Dict[str, Any] = {"Node": settings.node, "CheckID": CHECK_ID}
    if settings.datacenter:
        body["Datacenter"] = settings.datacenter
    return WriteRequest(
        "/v1/catalog/deregister", body, f"remove node check {CHECK_ID}", "deregister"
    )
