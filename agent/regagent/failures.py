"""How failing sync cycles are logged: each kind of failure once, then a reminder.

An outage makes every cycle fail, every 30 seconds, on ten thousand hosts: a line per cycle
would bury whatever else the journal says. So a spell of failures logs each kind at error level
once (`sync_failed`), then a reminder every `REMIND_EVERY` seconds (`sync_still_failing`), the
cycles in between at debug, and `sync_recovered` when a cycle succeeds again.
"""

from __future__ import annotations

import time
from typing import Callable, List, Optional

import structlog

from regagent.errors import ConsulRefused, ConsulUnreachable, CycleDeadline, RegagentError

log = structlog.get_logger(__name__)

Clock = Callable[[], float]

# During a long failure, a reminder at error level this often (the cycles in between log at
# debug): an outage of an hour is one `sync_failed` and five `sync_still_failing`, not 120 errors.
REMIND_EVERY = 600.0
_KINDS_KEPT = 16  # distinct failures remembered in one spell; more are treated as repeats


def error_kind(error: RegagentError) -> str:
    """What stays the same from cycle to cycle of one failure. An unreachable or leaderless
    cluster, or a cycle past its deadline, names servers, seconds and counts that change every
    cycle: its class is the kind. A refusal is its status and message, whichever server gave it
    (a denied token is refused by every server the cycles happen to ask). Anything else (a
    bug) is its text."""
    if isinstance(error, (ConsulUnreachable, CycleDeadline)):
        return type(error).__name__
    if isinstance(error, ConsulRefused):
        return f"refused ({error.status}): {error.message}"
    return str(error)


class ErrorReporter:
    """Logs each kind of failure once at error level (`sync_failed`), then, while cycles keep
    failing, a reminder every `remind_every` seconds (`sync_still_failing`) and the cycles in
    between at debug, so neither an outage nor a denied ACL token floods the journal every 30
    seconds; `sync_recovered` when a cycle succeeds again."""

    def __init__(self, clock: Clock = time.monotonic, remind_every: float = REMIND_EVERY):
        self.clock = clock
        self.remind_every = remind_every
        self.kinds: List[str] = []  # logged at error level in this spell of failures
        self.since: Optional[float] = None  # when the spell began
        self.reminded = 0.0
        self.failed = 0  # cycles failed in this spell

    def report(self, error: Optional[RegagentError]) -> None:
        now = self.clock()
        if error is None:
            if self.since is not None:
                log.info(
                    "sync_recovered", failed_s=round(now - self.since), failed_cycles=self.failed
                )
            self.kinds, self.since, self.failed = [], None, 0
            return
        text, kind = str(error), error_kind(error)
        if self.since is None:
            self.since = now
        self.failed += 1
        if kind not in self.kinds and len(self.kinds) < _KINDS_KEPT:
            self.kinds.append(kind)
            self.reminded = now
            log.error("sync_failed", error=text, kind=type(error).__name__)
        elif now - self.reminded >= self.remind_every:
            self.reminded = now
            log.error(
                "sync_still_failing",
                error=text,
                kind=type(error).__name__,
                failing_s=round(now - self.since),
                failed_cycles=self.failed,
            )
        else:
            log.debug("sync_failed_again", error=text)
