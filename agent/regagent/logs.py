"""structlog set-up: JSON lines for journald and pipes, key=value for a person at a terminal."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, List, Mapping, Optional, TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# The syslog priority of each level, as journald reads it from a `<N>` line prefix on a
# service's stderr (sd-daemon(3)), so `journalctl -p warning` shows warnings and errors only.
JOURNAL_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def writes_to_journal(stream: TextIO, env: Mapping[str, str]) -> bool:
    """True when `stream` is the journal: systemd names its device and inode in $JOURNAL_STREAM
    (a pipe or file a child process inherited would not match)."""
    expected = env.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor: a StringIO, a closed stream
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def journal_prefix(level: str, stream: Optional[TextIO] = None) -> str:
    """The `<N>` prefix of `level` for a line written to `stream` (default: stderr) outside
    structlog, such as the command's own error lines; empty where that is not the journal."""
    stream = sys.stderr if stream is None else stream
    return f"<{JOURNAL_PRIORITIES[level]}>" if writes_to_journal(stream, os.environ) else ""


class JournalPriority:
    """Wraps a renderer: each line starts with the `<N>` priority of its level."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> str:
        priority = JOURNAL_PRIORITIES.get(str(event_dict.get("level", method_name)), 6)
        return f"<{priority}>{self.renderer(logger, method_name, event_dict)}"


def configure_logging(
    level: str = "info", fmt: str = "auto", stream: Optional[TextIO] = None
) -> None:
    """Set up structlog for the process; `fmt` is auto, json or console. Logs go to stderr."""
    # Looked up at call time, not import time, so a replaced sys.stderr (tests) is honoured.
    stream = sys.stderr if stream is None else stream
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    processors: List[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    if writes_to_journal(stream, os.environ):
        processors[-1] = JournalPriority(processors[-1])
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
