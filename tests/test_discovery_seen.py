"""The discovery state file: round trip, atomic replacement, corrupt or missing files."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from regagent.discovery.seen import (
    SeenService,
    decode_state,
    encode_state,
    load_state,
    parse_time,
    save_state,
    state_path,
    worth_saving,
)
from regagent.rules import utc_text

T0 = 1_800_000_000.0


def entry(service_id: str = "node-exporter-9100") -> SeenService:
    """A valid entry; its name and port follow from the ID (`<name>-<port>`)."""
    name, _, port = service_id.rpartition("-")
    return SeenService(
        id=service_id,
        name=name,
        port=int(port),
        address="192.0.2.10",
        tags=("node_exporter",),
        meta={"exporter": "node_exporter", "managed-by": "regagent"},
        first_seen=T0,
        last_seen=T0 + 60,
    )


def test_round_trip(tmp_path: Path) -> None:
    path = state_path(str(tmp_path / "sub"))  # the directory is created
    assert save_state(path, {"node-exporter-9100": entry()})
    assert load_state(path) == {"node-exporter-9100": entry()}
    doc = json.loads(Path(path).read_text())
    assert doc["version"] == 1
    assert doc["services"]["node-exporter-9100"]["first_seen"] == "2027-01-15T08:00:00Z"
    assert [p.name for p in Path(path).parent.iterdir()] == ["discovered.json"]  # no temp left


def test_encoding_is_canonical() -> None:
    a = {"b-1": entry("b-1"), "a-1": entry("a-1")}
    b = {"a-1": entry("a-1"), "b-1": entry("b-1")}
    assert encode_state(a) == encode_state(b)


def test_missing_file_is_empty_state(tmp_path: Path) -> None:
    assert load_state(str(tmp_path / "discovered.json")) == {}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "[]",
        '{"version": 2, "services": {}}',
        '{"version": 1, "services": []}',
        '{"version": 1, "services": {"x": {"name": "x"}}}',
        '{"version": 1, "services": {"x": {"name": "x", "port": 0, "address": "", "tags": [],'
        ' "meta": {}, "first_seen": "2027-01-15T08:00:00Z", "last_seen": "2027-01-15T08:00:00Z"}}}',
        '{"version": 1, "services": {"x": {"name": "x", "port": 1, "address": "", "tags": [],'
        ' "meta": {}, "first_seen": "yesterday", "last_seen": "2027-01-15T08:00:00Z"}}}',
    ],
)
def test_corrupt_file_is_rebuilt_with_a_warning(tmp_path: Path, text: str) -> None:
    path = tmp_path / "discovered.json"
    path.write_text(text)
    with capture_logs() as logs:
        assert load_state(str(path)) == {}
    assert [e["log_level"] for e in logs] == ["warning"]
    assert logs[0]["event"] == "discovery_state_corrupt"
    assert save_state(str(path), {"node-exporter-9100": entry()})
    assert list(load_state(str(path))) == ["node-exporter-9100"]


def test_unwritable_directory_is_reported_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert not save_state(str(blocker / "discovered.json"), {"x-1": entry("x-1")})


def test_write_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "discovered.json")
    save_state(path, {"a-1": entry("a-1")})

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    assert not save_state(path, {"b-1": entry("b-1")})
    assert list(load_state(path)) == ["a-1"]  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["discovered.json"]


def test_unknown_keys_survive_a_rewrite() -> None:
    doc = json.loads(encode_state({"x-1": entry("x-1")}))
    doc["services"]["x-1"]["note"] = "kept"
    again = decode_state(json.dumps(doc))
    assert json.loads(encode_state(again))["services"]["x-1"]["note"] == "kept"


def test_time_format() -> None:
    assert utc_text(T0 + 0.9) == "2027-01-15T08:00:00Z"
    assert parse_time("2027-01-15T08:00:00Z") == T0


def test_worth_saving_ignores_last_seen_creeping_below_the_step() -> None:
    stored = {"x-1": entry("x-1")}
    assert not worth_saving(stored, stored)
    assert not worth_saving(stored, {"x-1": replace(entry("x-1"), last_seen=T0 + 60 + 599)})
    assert worth_saving(stored, {"x-1": replace(entry("x-1"), last_seen=T0 + 60 + 600)})
    assert worth_saving(stored, {"x-1": replace(entry("x-1"), meta={"exporter": "other"})})
    assert worth_saving(stored, {"x-1": replace(entry("x-1"), first_seen=T0 - 1)})
    assert worth_saving(stored, {})
    assert worth_saving(stored, {**stored, "y-1": entry("y-1")})
