"""Every line regagent writes to stderr is one JSON object (one text line at a terminal), whatever
a client, a thread or a library does: each of Python's own ways to write there is played for
real in a child process, and `regagent run` is flooded with reset connections on its metrics
port. Each kind of event is one line a minute at most."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

from consulsim import SimCluster
from helpers.consul import static, write_config
from helpers.daemon import has, notified_daemon
from helpers.ports import free_port
from hostile_clients import rst_flood, slow_header_clients

PRELUDE = """
import logging, sys, threading, warnings
from regagent.logs import configure_logging
from regagent.stderr_guard import install
install()
configure_logging("info", sys.argv[1])
"""


def child(body: str, fmt: str = "json") -> subprocess.CompletedProcess[str]:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code, fmt],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def json_lines(stderr: str) -> List[Dict[str, Any]]:
    """Every stderr line as JSON; fails on any line that is not one object."""
    events = []
    for line in stderr.splitlines():
        parsed = json.loads(line)
        assert isinstance(parsed, dict), line
        events.append(parsed)
    return events


def test_crashes_in_threads_are_one_throttled_line_each_kind() -> None:
    result = child(
        """
        def crash():
            raise ValueError("bad\\nthing")
        for _ in range(50):
            t = threading.Thread(target=crash, name="worker")
            t.start(); t.join()
        def other():
            {}["missing"]
        t = threading.Thread(target=other); t.start(); t.join()
        """
    )
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stderr)
    crashes = [e for e in events if e["event"] == "thread_crashed"]
    assert [c["error"] for c in crashes] == ["ValueError: bad thing", "KeyError: 'missing'"]
    assert crashes[0]["thread"] == "worker" and "in crash" in crashes[0]["at"]
    assert "Traceback" not in result.stderr


def test_unraisable_exceptions_warnings_and_library_logs_are_lines() -> None:
    result = child(
        """
        class Leaky:
            def __del__(self):
                raise RuntimeError("in del")
        for _ in range(20):
            Leaky()
        warnings.warn("first", UserWarning)
        warnings.warn("second", DeprecationWarning, stacklevel=1)
        library = logging.getLogger("urllib3.connectionpool")
        for i in range(100):
            library.warning("Connection pool is full, discarding connection: %s", i)
        """
    )
    assert result.returncode == 0, result.stderr
    kinds = [e["event"] for e in json_lines(result.stderr)]
    assert kinds.count("unraisable_exception") == 1
    assert kinds.count("python_warning") == 2
    assert kinds.count("library_log") == 1
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


def test_an_exception_that_ends_the_process_is_one_line_and_exit_status_1() -> None:
    result = child("raise ValueError('the end')")
    assert result.returncode == 1
    (event,) = json_lines(result.stderr)
    assert event["event"] == "crashed" and event["error"] == "ValueError: the end"


def test_at_a_terminal_each_event_is_one_text_line() -> None:
    result = child(
        """
        def crash():
            raise ValueError("a\\nb")
        t = threading.Thread(target=crash); t.start(); t.join()
        warnings.warn("careful")
        """,
        fmt="console",
    )
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert "thread_crashed" in lines[0] and "python_warning" in lines[1]


def test_the_daemons_stderr_stays_json_under_a_reset_flood(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(
        tmp_path, consul_cluster, [static("queue", 9000)], telemetry={"listen": f"127.0.0.1:{port}"}
    )
    with notified_daemon(config) as (daemon, notify, log):
        notify.wait_for(has("READY=1"))
        with slow_header_clients("127.0.0.1", port, 20, every=0.2):
            assert rst_flood("127.0.0.1", port, seconds=3.0) > 0
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    stderr = log.read_text()
    events = [e["event"] for e in json_lines(stderr)]
    assert "metrics_serving" in events and "stopped" in events
    assert "Traceback" not in stderr
