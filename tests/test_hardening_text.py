"""Text taken from exporters is evidence, not markup: printable, and within Consul's limits.

Before: a `*_build_info` version over 512 characters made the exporter be skipped every cycle
(Consul's Meta value limit), and control characters and ANSI escapes reached Consul and the
terminal raw. Now `rules.printable_text` cleans it where discovery builds Meta and Output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from helpers.discovery import FAKE, finding, only, run, stop, wait_listening
from helpers.fakes import discovery_for, full_pass, reading_of
from helpers.ports import free_port
from regagent.config.model import Config, DiscoveryConfig, SyncConfig
from regagent.rules import META_VALUE_MAX, meta_problems, printable_text

ANSI_VERSION = "1.5.0\x1b[2J\x1b[31mPWNED\x1b]0;title\x07\x00\r\n\u202e"


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("1.5.0", "1.5.0"),
        ("v1.2.3-rc.1+build 5", "v1.2.3-rc.1+build 5"),
        ("1.5\x1b[31mred\x1b[0m", "1.5red"),  # the whole escape sequence goes, not just ESC
        ("a\x1b]0;window title\x07b", "ab"),  # OSC, ended by BEL
        ("a\x00b\tc\nd\r", "a?b?c?d?"),
        ("caf\u00e9 \u4e2d", "caf\u00e9 \u4e2d"),  # printable non-ASCII stays
        ("rtl\u202eoverride\u200b", "rtl?override?"),  # format characters do not
        ("\ud800x", "?x"),  # a lone surrogate (from errors='surrogateescape' text)
    ],
)
def test_printable_text(text: str, clean: str) -> None:
    assert printable_text(text) == clean


@pytest.mark.parametrize("char", ["x", "\u00e9", "\u4e2d", "\U0001f600"])
def test_printable_text_cuts_to_the_byte_limit_without_splitting_a_character(char: str) -> None:
    cut = printable_text(char * 2000)

    assert len(cut.encode("utf-8")) <= META_VALUE_MAX
    assert cut.endswith("...")
    assert set(cut[:-3]) == {char}
    assert printable_text(char * 2000) == cut  # stable: same input, same text


def test_long_version_is_registered_cut_not_skipped() -> None:
    (intent,) = run(Config(), finding(version="1." + "9" * 600)).intents

    version = intent.service.meta["exporter_version"]
    assert len(version) <= META_VALUE_MAX and version.startswith("1.999")
    assert meta_problems(dict(intent.service.meta)) == []  # what the planner checks (skipped)


def test_escapes_in_the_version_reach_neither_meta_nor_output() -> None:
    (intent,) = run(Config(), finding(version=ANSI_VERSION)).intents

    assert intent.service.meta["exporter_version"] == "1.5.0PWNED????"
    assert intent.status is not None
    assert intent.status[1] == "node_exporter 1.5.0PWNED???? serving /metrics on :9100"


def test_version_of_only_control_characters_reads_as_unknown() -> None:
    (intent,) = run(Config(), finding(version="\x1b[0m")).intents

    assert intent.service.meta["exporter_version"] == "unknown"


@pytest.fixture
def hostile_exporter() -> Iterator[int]:
    """A real prometheus_client exporter whose build_info version holds escapes and 600 chars."""
    port = free_port()
    version = ANSI_VERSION.replace("\x00", "\x01") + "x" * 600  # argv cannot hold NUL
    argv = [sys.executable, FAKE, "exporter", "0.0.0.0", str(port)]
    argv += ["mysqld_exporter_build_info", version, "--lifetime", "120"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc)
        yield port
    finally:
        stop(proc)


def test_real_exporter_with_a_hostile_version_is_registered_clean(
    hostile_exporter: int, tmp_path: Path
) -> None:
    port = hostile_exporter
    config = Config(
        discovery=DiscoveryConfig(port_ranges=((port, port),)),
        sync=SyncConfig(state_dir=str(tmp_path)),
    )
    discovery = discovery_for(config, reading_of(only(port)))

    (intent,) = full_pass(discovery, "192.0.2.10", 1_800_000_000.0)

    version = intent.service.meta["exporter_version"]
    assert version.startswith("1.5.0PWNED????xxx") and version.endswith("...")
    assert len(version.encode()) <= META_VALUE_MAX
    assert all(c.isprintable() for c in version)
    assert intent.status is not None and "\x1b" not in intent.status[1]


# -- configured text: the same printable rule, refused at check-config -------------------------

HOSTILE_CONFIG_TEXT = {
    "nul": "a\\0b",
    "escape": "\\e[2Jwiped",
    "bidi-override": "evil\\u202etxt.exe",
    "zero-width-space": "node\\u200bexporter",
    "line-break": "two\\nlines",
}


@pytest.mark.parametrize("text", list(HOSTILE_CONFIG_TEXT.values()), ids=list(HOSTILE_CONFIG_TEXT))
@pytest.mark.parametrize(
    ("where", "section"),
    [
        ("services[0].tags[0]", 'services: [{{name: web, port: 8080, tags: ["{t}"]}}]'),
        ("services[0].meta.team", 'services: [{{name: web, port: 8080, meta: {{team: "{t}"}}}}]'),
        ("services[0].id", 'services: [{{name: web, port: 8080, id: "{t}"}}]'),
        ("defaults.tags[0]", 'defaults: {{tags: ["{t}"]}}'),
        ("defaults.meta.team", 'defaults: {{meta: {{team: "{t}"}}}}'),
        ("node.meta.rack", 'node: {{meta: {{rack: "{t}"}}}}'),
        (
            "discovery.overrides[0].tags[0]",
            'discovery: {{overrides: [{{port: 9100, tags: ["{t}"]}}]}}',
        ),
    ],
)
def test_configured_text_that_would_reach_consul_must_be_printable(
    tmp_path: Path, text: str, where: str, section: str
) -> None:
    config = tmp_path / "regagent.yaml"
    config.write_text(section.format(t=text) + "\n")

    checked = subprocess.run(
        [sys.executable, "-m", "regagent", "-c", str(config), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert checked.returncode == 2, checked.stdout
    assert f"{where}: contains U+" in checked.stderr
    assert "only printable characters are allowed" in checked.stderr


@pytest.mark.parametrize(
    "name", ["bad node/../x?y", "a_b", "-lead", "trail-", "x" * 64, "web01..example", ""]
)
def test_node_name_follows_consuls_rule(tmp_path: Path, name: str) -> None:
    config = tmp_path / "regagent.yaml"
    config.write_text(f"node: {{name: {name!r}}}\n")

    checked = subprocess.run(
        [sys.executable, "-m", "regagent", "-c", str(config), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert checked.returncode == 2
    assert "node.name:" in checked.stderr and "is not a valid node name" in checked.stderr


@pytest.mark.parametrize("name", ["web01", "Web-01", "10-0-0-7", "web01.dc1.example.com", "x" * 63])
def test_node_names_consul_accepts_are_accepted(name: str) -> None:
    from regagent.rules import node_name_problem

    assert node_name_problem(name) is None
