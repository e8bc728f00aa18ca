"""Log lines on the journal carry the `<N>` syslog priority of their level (sd-daemon(3)), and
only there: systemd names the journal stream in $JOURNAL_STREAM. The real journald reading them
is tests/test_systemd_service.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, List

import pytest
import structlog

from regagent.logs import configure_logging, journal_prefix


@pytest.fixture
def fresh_structlog() -> Iterator[None]:
    """structlog's configuration is process-wide: put the defaults back for later tests."""
    yield
    structlog.reset_defaults()


def log_through(path: Path, journal_stream: str, monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """Logs one event per level into the file at `path` with $JOURNAL_STREAM set as given."""
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
    with path.open("w", encoding="utf-8") as stream:
        configure_logging("debug", "auto", stream)
        log = structlog.get_logger("test")
        log.debug("a_debug")
        log.info("an_info", server="10.0.0.1:8500")
        log.warning("a_warning")
        log.error("an_error")
    return path.read_text(encoding="utf-8").splitlines()


def identity(path: Path) -> str:
    info = os.stat(path)
    return f"{info.st_dev}:{info.st_ino}"


@pytest.mark.usefixtures("fresh_structlog")
def test_lines_on_the_journal_start_with_their_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal"
    path.touch()
    lines = log_through(path, identity(path), monkeypatch)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    # After the prefix, which journald strips, each line is still one JSON object.
    records = [json.loads(line[3:]) for line in lines]
    assert [r["event"] for r in records] == ["a_debug", "an_info", "a_warning", "an_error"]
    assert records[1]["server"] == "10.0.0.1:8500"


@pytest.mark.usefixtures("fresh_structlog")
def test_no_prefix_where_stderr_is_not_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.touch()
    # A child that inherited $JOURNAL_STREAM but writes into a pipe or file of its own.
    path = tmp_path / "log"
    path.touch()
    for value in (identity(other), "", "garbage"):
        lines = log_through(path, value, monkeypatch)
        assert [json.loads(line)["event"] for line in lines][-1] == "an_error", value


def test_the_commands_own_error_lines_carry_the_prefix_on_the_journal_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal"
    with path.open("w", encoding="utf-8") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", identity(path))
        assert journal_prefix("error", stream) == "<3>"
        assert journal_prefix("warning", stream) == "<4>"
        monkeypatch.delenv("JOURNAL_STREAM")
        assert journal_prefix("error", stream) == ""
