"""`CycleReport`: everything one sync cycle did, in one place.

The command's output, the daemon's log line, the metrics and systemd's `STATUS=` all read it, so
none of them is sprinkled through the engine. Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

from regagent.errors import RegagentError
from regagent.model import ActualState, DesiredState, Source
from regagent.plan import Plan


@dataclass
class CycleReport:
    """Everything one cycle did, for the command's output, the log, metrics and STATUS=."""

    dry_run: bool = False
    desired: Optional[DesiredState] = None
    actual: Optional[ActualState] = None
    plan: Optional[Plan] = None
    planned_writes: int = 0  # writes the plan takes, counted as writes_by_kind counts them
    writes_by_kind: Dict[str, int] = field(default_factory=dict)
    requests: int = 0  # write requests that carried them (one transaction carries many)
    server: Optional[str] = None
    error: Optional[RegagentError] = None
    timings: Dict[str, float] = field(default_factory=dict)  # phase -> seconds
    sources: Dict[str, Source] = field(default_factory=dict)  # service ID -> intent source

    @property
    def writes(self) -> int:
        return sum(self.writes_by_kind.values())

    @property
    def duration(self) -> float:
        return sum(self.timings.values())
