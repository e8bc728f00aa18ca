"""The emulator's answer faults (status 429/503 with Retry-After, drip, endless): conformance of
the fault itself, then regagent against it (bounded, cooled down, failed over)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import List

import requests

from consulsim import SimCluster
from helpers.consul import write_config
from regagent.app import App, build
from regagent.config import load_config
from regagent.model import ServiceIntent, ServiceRegistration


def raw_get(cluster: SimCluster, i: int, path: str = "/v1/status/leader") -> List[bytes]:
    """The answer's bytes as they arrived, recv by recv, until the server closes."""
    host, port = cluster.host_port(i)
    pieces: List[bytes] = []
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        while True:
            piece = sock.recv(65536)
            if not piece:
                return pieces
            pieces.append(piece)


def test_status_fault_answers_every_request_with_it_and_retry_after(
    consul_cluster: SimCluster,
) -> None:
    consul_cluster.answer_status(0, 429, retry_after=7)
    answer = requests.get(consul_cluster.url(0) + "/v1/catalog/nodes", timeout=10)
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "7"
    assert "rate limit exceeded" in answer.text
    assert requests.get(consul_cluster.url(1) + "/v1/catalog/nodes", timeout=10).ok
    consul_cluster.answer_status(0, 503)
    answer = requests.get(consul_cluster.url(0) + "/v1/catalog/nodes", timeout=10)
    assert answer.status_code == 503 and "Retry-After" not in answer.headers
    assert consul_cluster.stats()["servers"][0]["endpoints"]["GET /v1/catalog/nodes"] == 2
    consul_cluster.answer_status(0, 0)
    assert requests.get(consul_cluster.url(0) + "/v1/catalog/nodes", timeout=10).ok


def test_drip_fault_sends_the_answer_a_byte_at_a_time(consul_cluster: SimCluster) -> None:
    consul_cluster.drip(0, 0.01)
    pieces = raw_get(consul_cluster, 0)
    answer = b"".join(pieces)
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b'"')  # the leader
    assert len(pieces) > len(answer) // 4  # in many small pieces, not one write
    consul_cluster.drip(0, 0)
    assert len(raw_get(consul_cluster, 0)) <= 3


def test_endless_fault_never_ends_the_body(consul_cluster: SimCluster) -> None:
    consul_cluster.endless(0)
    with requests.get(consul_cluster.url(0) + "/v1/status/leader", stream=True, timeout=10) as r:
        assert r.status_code == 200 and "Content-Length" not in r.headers
        received = 0
        for chunk in r.raw.stream(1 << 20):
            received += len(chunk)
            if received > 8 << 20:
                break
    assert received > 8 << 20
    consul_cluster.endless(0, False)
    assert requests.get(consul_cluster.url(0) + "/v1/status/leader", timeout=10).ok


def engine(cluster: SimCluster, tmp_path: Path, **consul: str) -> App:
    path = write_config(
        tmp_path,
        cluster,
        [],
        consul={"cooldown_initial": "30s", "cooldown_max": "60s", **consul},
    )
    intents = [ServiceIntent(ServiceRegistration("q-1", "q", 1, "127.0.0.1"), "static")]
    return build(load_config(str(path)), intent_source=lambda *_: intents)


def test_regagent_fails_over_from_every_answer_fault(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    faults = [
        (lambda: consul_cluster.answer_status(0, 429, 50), "rate limited (429"),
        (lambda: consul_cluster.answer_status(0, 503), "unavailable (503"),
        (lambda: consul_cluster.drip(0, 0.3), "too slow: no complete answer within 2s"),
        (lambda: consul_cluster.endless(0), "answer too large"),
    ]
    heal = [
        lambda: consul_cluster.answer_status(0, 0),
        lambda: consul_cluster.answer_status(0, 0),
        lambda: consul_cluster.drip(0, 0),
        lambda: consul_cluster.endless(0, False),
    ]
    for (fault, message), healed in zip(faults, heal):
        fault()
        try:
            app = engine(consul_cluster, tmp_path)
            report = app.engine.cycle()
            assert report.error is None, report.error
            assert report.server != consul_cluster.addresses[0]
            assert app.pool.wait_idle(30)
            home = app.pool.servers[0]
            assert message in home.last_error, home.last_error
            assert home.cooling(time.monotonic())
        finally:
            healed()
