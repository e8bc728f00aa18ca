"""A wildcard listener of one family is never registered at a node address of the other."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from helpers.discovery import FAKE, stop, wait_listening
from helpers.ports import free_port
from regagent.config import Config
from regagent.discovery.identify import IDENTIFIED, WILDCARD, DiscoveryResult, Finding
from regagent.discovery.intents import build_intents
from regagent.discovery.listeners import Listener

NOW = 1_800_000_000.0


def wildcard(*addresses: str) -> Finding:
    listeners = tuple(
        Listener(a, 9100, socket.AF_INET6 if ":" in a else socket.AF_INET, 7 + i)
        for i, a in enumerate(addresses)
    )
    return Finding(
        port=9100,
        listeners=listeners,
        process=None,
        address_kind=WILDCARD,
        address="",
        probe_address="127.0.0.1",
        outcome=IDENTIFIED,
        exporter="node_exporter",
        version="1.5.0",
    )


@pytest.mark.parametrize(
    ("listeners", "node_address", "registered"),
    [
        (("0.0.0.0",), "2001:db8::10", False),  # IPv4 only, IPv6 node: nothing would answer
        (("0.0.0.0",), "192.0.2.10", True),
        (("::",), "2001:db8::10", True),
        (("::",), "192.0.2.10", True),  # dual-stack unless IPV6_V6ONLY
        (("0.0.0.0", "::"), "2001:db8::10", True),
    ],
)
def test_the_listen_family_must_reach_the_node_address(
    listeners: tuple[str, ...], node_address: str, registered: bool
) -> None:
    result = build_intents(Config(), node_address, DiscoveryResult((wildcard(*listeners),)), NOW)
    assert bool(result.intents) is registered
    if not registered:
        (skipped,) = result.skipped
        assert "listens on IPv4 only" in skipped.reason and node_address in skipped.reason


@pytest.fixture
def ipv4_exporter() -> Iterator[int]:
    """A real exporter on 0.0.0.0 only (it is reached on loopback alone)."""
    port = free_port(socket.AF_INET, "0.0.0.0")
    argv = [sys.executable, FAKE, "exporter", "0.0.0.0", str(port)]
    argv += ["node_exporter_build_info", "1.6.1", "--lifetime", "120"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        yield port
    finally:
        stop(proc)


def test_discover_leaves_out_an_ipv4_only_exporter_on_an_ipv6_node(
    ipv4_exporter: int, tmp_path: Path
) -> None:
    config = tmp_path / "regagent.yaml"
    port = ipv4_exporter
    config.write_text(
        yaml.safe_dump(
            {
                "node": {"name": "v6-host", "address": "::1"},
                "discovery": {"port_ranges": [f"{port}-{port}"]},
                "sync": {"state_dir": str(tmp_path)},
            }
        )
    )
    shown = subprocess.run(
        [sys.executable, "-m", "regagent", "-c", str(config), "discover", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    row = {r["port"]: r for r in json.loads(shown.stdout)["listeners"]}[port]
    assert row["outcome"] == "identified"
    assert row["service_id"] is None and "IPv4 only" in row["not_registered"]
