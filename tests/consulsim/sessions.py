"""Sessions: the HTTP defaults, the server's validation, the JSON shape and the leader's timers.

Mirrors consul ``agent/session_endpoint.go`` (defaults, ``fixupEmptySessionChecks``),
``agent/consul/session_endpoint.go`` (``Session.Apply`` validation texts) and
``agent/consul/session_ttl.go`` (TTL timers that only the leader keeps). The sessions
themselves are Raft state and live in ``state.Store``; the timers are not, which is why a new
leader starts every TTL afresh (``initializeSessionTimers``). Research notes with sources:
/work/notes/consul-sessions.md (summarised in README.md, "Sessions").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .decode import DecodeError, format_go_duration, parse_go_duration

Record = Dict[str, Any]

SERF_CHECK = "serfHealth"
DEFAULT_LOCK_DELAY_NS = 15 * 1_000_000_000
TTL_MAX_NS = 24 * 3600 * 1_000_000_000  # structs.SessionTTLMax
TTL_MULTIPLIER = 2  # structs.SessionTTLMultiplier: the leader's timer runs 2 x TTL
_LOCK_DELAY_MIN_THRESHOLD = 1000  # structs.lockDelayMinThreshold: smaller numbers are seconds


class SessionError(Exception):
    """A refusal of ``Session.Apply`` before Raft; ``str()`` is Consul's text (served as 500)."""


def new_session_request(node_name: str, body: Record, body_given: bool) -> Record:
    """The Session that ``SessionCreate`` sends to the server: the agent's defaults (its own
    node, ``serfHealth``, 15 s lock delay, release), the body on top, then
    ``fixupEmptySessionChecks``."""
    sess: Record = {
        "Node": node_name,
        "NodeChecks": [SERF_CHECK],
        "Checks": [SERF_CHECK],
        "LockDelay": DEFAULT_LOCK_DELAY_NS,
        "Behavior": "release",
        "TTL": "",
        "Name": "",
        "ServiceChecks": None,
    }
    if body_given:
        for key, value in body.items():
            sess[key] = value
        if "LockDelay" in body:
            sess["LockDelay"] = lock_delay_ns(body["LockDelay"])
    _fixup_empty_checks(sess)
    return sess


def _fixup_empty_checks(sess: Record) -> None:
    """``fixupEmptySessionChecks`` (pre-1.7 clients sent ``Checks: []`` for "no checks")."""
    checks = sess.get("Checks")
    if not checks:
        sess["NodeChecks"] = []
        sess["Checks"] = None
        return
    if checks == [SERF_CHECK]:
        sess["Checks"] = None
        return
    if not sess.get("NodeChecks"):
        sess["Checks"] = None


def lock_delay_ns(value: Any) -> int:
    """``Session.UnmarshalJSON``: a Go duration string or nanoseconds; numbers below 1000 are
    taken as seconds."""
    if value is None:
        return DEFAULT_LOCK_DELAY_NS
    if isinstance(value, str):
        ns = parse_go_duration(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        ns = int(value)
    else:
        return 0
    if ns < _LOCK_DELAY_MIN_THRESHOLD:
        ns *= 1_000_000_000
    return ns


def validate_apply(sess: Record, ttl_min_ns: int) -> None:
    """``Session.Apply`` (create) before Raft: node, behavior and TTL, with Consul's texts."""
    if not sess.get("Node"):
        raise SessionError("Must provide Node")
    behavior = sess.get("Behavior") or ""
    if behavior == "":
        sess["Behavior"] = "release"
    elif behavior not in ("release", "delete"):
        raise SessionError(f"Invalid Behavior setting '{behavior}'")
    ttl_text = sess.get("TTL") or ""
    if ttl_text:
        try:
            ttl = parse_go_duration(ttl_text)
        except DecodeError as exc:
            raise SessionError(f"Session TTL '{ttl_text}' invalid: {exc}") from None
        if ttl != 0 and (ttl < ttl_min_ns or ttl > TTL_MAX_NS):
            # %d of a time.Duration prints nanoseconds; %v the Go duration text.
            raise SessionError(
                f"Invalid Session TTL '{ttl}', must be between "
                f"[{format_go_duration(ttl_min_ns)}={format_go_duration(TTL_MAX_NS)}]"
            )


def ttl_seconds(sess: Record) -> float:
    """The session's TTL in seconds; 0 for none (``resetSessionTimer`` skips those)."""
    text = sess.get("TTL") or ""
    if text in ("", "0", "0s", "0m", "0h"):
        return 0.0
    try:
        return parse_go_duration(text) / 1e9
    except DecodeError:
        return 0.0


def session_json(sess: Record) -> Record:
    """``structs.Session`` as the HTTP API renders it (CE: no namespace fields)."""
    out: Record = {
        "ID": sess["ID"],
        "Name": sess.get("Name", ""),
        "Node": sess["Node"],
        "LockDelay": sess.get("LockDelay", 0),
        "Behavior": sess.get("Behavior", ""),
        "TTL": sess.get("TTL", ""),
        "NodeChecks": copy.deepcopy(sess.get("NodeChecks")),
        "ServiceChecks": copy.deepcopy(sess.get("ServiceChecks")),
    }
    if sess.get("Checks"):
        out["Checks"] = list(sess["Checks"])  # deprecated, omitempty
    out["CreateIndex"] = sess["CreateIndex"]
    out["ModifyIndex"] = sess["ModifyIndex"]
    return out


@dataclass
class SessionTimers:
    """The leader's TTL timers (``sessionTimers``): deadlines by session ID, not Raft state."""

    deadlines: Dict[str, float] = field(default_factory=dict)

    def reset(self, session_id: str, ttl: float, now: float) -> None:
        """Start or restart a timer of ``2 x TTL`` (``createSessionTimer``)."""
        if ttl > 0:
            self.deadlines[session_id.lower()] = now + ttl * TTL_MULTIPLIER

    def clear(self, session_id: str) -> None:
        self.deadlines.pop(session_id.lower(), None)

    def clear_all(self) -> None:
        """A leader stepping down stops every timer (``clearAllSessionTimers``)."""
        self.deadlines.clear()

    def expired(self, now: float) -> List[str]:
        return sorted(sid for sid, at in self.deadlines.items() if at <= now)

    def next_deadline(self) -> Optional[float]:
        return min(self.deadlines.values()) if self.deadlines else None

    def remaining(self, session_id: str, now: float) -> Optional[float]:
        at = self.deadlines.get(session_id.lower())
        return None if at is None else max(0.0, at - now)
