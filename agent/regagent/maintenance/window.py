"""A maintenance window: what `regagent maint start` records, and the node check it becomes.

Pure. Times are Unix seconds handed in by the caller (a window must outlive the process, so
it is kept in wall-clock time, not monotonic). The check is the one Consul's agent creates for
`consul maint -enable` (agent/agent.go `EnableNodeMaintenance`): CheckID `_node_maintenance`,
Name `Node Maintenance Mode`, Status critical, Notes the reason, no service. Consul's API
(`api/health.go` `AggregatedStatus`), Prometheus' and vmagent's `consul_sd_configs` recognise
that CheckID and report the node's services as `maintenance` (`__meta_consul_health`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, cast

from regagent.config.validate import parse_duration
from regagent.rules import format_duration, text_problem

NODE_MAINTENANCE_CHECK_ID = "_node_maintenance"  # Consul's structs.NodeMaint
NODE_MAINTENANCE_CHECK_NAME = "Node Maintenance Mode"
NODE_MAINTENANCE_OUTPUT = "regagent maint: the node is in a maintenance window"

# The longest window: a week covers any planned work, and the deploy rules look this far back
# for the window's end once a host is gone (deploy/prometheus/rules: `[7d]`): keep them equal.
MAX_WINDOW = 7 * 86400.0
MIN_WINDOW = 1.0
MAX_REASON = 256  # characters: one line in `consul members`-style listings and in alerts

FORMAT_VERSION = 1

# How long an ended window's end time is still exported (metric): a stopped window must be
# scraped once with its new, past end, or a lookback of the last value would still find the
# future one; an hour is many scrape intervals.
ENDED_SHOWN_FOR = 3600.0


class WindowError(ValueError):
    """The window asked for cannot be recorded as asked (a usage error)."""


@dataclass(frozen=True)
class Window:
    """A maintenance window: since when, until when, why. `stopped` is when `maint stop` ended
    it early (then `until` equals it), None when it runs or ran to its end."""

    reason: str
    since: float
    until: float
    stopped: Optional[float] = None

    def active(self, now: float) -> bool:
        return self.since <= now < self.until

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)

    def shown(self, now: float) -> bool:
        """Whether the end time is still exported (active, or ended within ENDED_SHOWN_FOR)."""
        return now < self.until + ENDED_SHOWN_FOR

    def stop(self, now: float) -> Window:
        """The window ended now (unchanged if it had already ended)."""
        if not self.active(now):
            return self
        return Window(self.reason, self.since, now, stopped=now)

    def state(self, now: float) -> str:
        """`active`, `stopped` or `expired`."""
        if self.active(now):
            return "active"
        return "stopped" if self.stopped is not None else "expired"


def window_length(text: str) -> float:
    """`--for` as seconds: a duration such as 30m, 2h, 1d; between MIN_WINDOW and MAX_WINDOW."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise WindowError(f"--for: {exc}") from None
    if seconds < MIN_WINDOW:
        raise WindowError(f"--for {text}: a window lasts at least {MIN_WINDOW:g}s")
    if seconds > MAX_WINDOW:
        raise WindowError(
            f"--for {text}: a window lasts at most {format_duration(MAX_WINDOW)} "
            "(start a new one when it ends)"
        )
    return seconds


def checked_reason(text: str) -> str:
    """`--reason` as recorded: trimmed, non-empty, printable, at most MAX_REASON characters."""
    reason = text.strip()
    if not reason:
        raise WindowError("--reason: say why the host is in maintenance (it is shown in Consul)")
    problem = text_problem(reason)
    if problem:
        raise WindowError(f"--reason {problem}")
    if len(reason) > MAX_REASON:
        raise WindowError(f"--reason is {len(reason)} characters long; at most {MAX_REASON}")
    return reason


def new_window(reason: str, length: float, now: float) -> Window:
    return Window(checked_reason(reason), now, now + length)


def window_json(window: Window) -> str:
    """The state file's text."""
    document: Dict[str, Any] = {
        "version": FORMAT_VERSION,
        "reason": window.reason,
        "since": window.since,
        "until": window.until,
        "stopped": window.stopped,
    }
    return json.dumps(document, indent=2) + "\n"


def parse_window(text: str) -> Window:
    """The window a state file holds; raises WindowError when it is not one regagent wrote."""
    try:
        document = json.loads(text)
    except ValueError:
        raise WindowError("is not JSON") from None
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise WindowError(f"is not a version {FORMAT_VERSION} maintenance record")
    reason = document.get("reason")
    if not isinstance(reason, str) or not reason or text_problem(reason):
        raise WindowError("has no printable reason")
    since, until, stopped = (document.get(key) for key in ("since", "until", "stopped"))
    if not (_is_time(since) and _is_time(until) and (stopped is None or _is_time(stopped))):
        raise WindowError("has a time that is not a number")
    since, until = float(cast(float, since)), float(cast(float, until))
    if not since <= until <= since + MAX_WINDOW:
        raise WindowError("has an end before its start or past the longest window")
    return Window(reason[:MAX_REASON], since, until, None if stopped is None else float(stopped))


def _is_time(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )
