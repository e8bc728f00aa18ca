"""Credential rotation without a reload: the ACL token file and the TLS files are re-read when
they change, a bad new file keeps the old credential, and every step is said once in the log.

Real processes: `regagent run` against the emulator (its ACLs accept and deny tokens; its HTTPS
servers require client certificates of the test CA from tests/tls_pki.py). Files are rotated
as rotation tools do it (a new file renamed into place) or written in place (a half-written
one). The assertions read the emulator's records, the daemon's JSON log lines and, where a
metric exists, its metrics endpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from consulsim import SimCluster
from helpers.catalog_sim import daemon_process
from helpers.ports import free_port
from helpers.waits import wait_for
from regagent.app import make_pool
from regagent.config.model import Config, ConsulConfig, TLSConfig
from regagent.consul.answers import ErrorAnswer
from regagent.consul.credentials import Credentials
from regagent.consul.http import stale_get
from regagent.consul.pool import ServerPool
from regagent.consul.retry import RetryPolicy
from regagent.errors import ConfigError, ConsulRefused
from regagent.x509 import certificates_in
from tls_pki import TLSFiles, issue_client_certificate, make_tls_files

NODE = "rotation-test-host"
ADMIN = "admin-secret-7f3a"  # the test's own reads
OLD = "old-secret-1b2c"
NEW = "new-secret-9d8e"
UNKNOWN = "never-issued-5a6b"
SECRETS = (OLD, NEW, UNKNOWN, ADMIN)


def _writer(accessor: str, sessions: bool) -> Dict[str, Any]:
    rules: Dict[str, Any] = {
        "AccessorID": accessor,
        "node_prefix": {"": "write"},
        "service_prefix": {"": "write"},
    }
    if sessions:
        rules["session_prefix"] = {"": "write"}
    return rules


def _acl(*tokens: str, sessions: bool = False) -> Dict[str, Any]:
    accessors = {ADMIN: "0", OLD: "1", NEW: "2"}
    return {
        "default_policy": "deny",
        "tokens": {
            token: _writer(f"5d0c6b3e-0000-4000-8000-00000000000{accessors[token]}", sessions)
            for token in (ADMIN, *tokens)
        },
    }


# ---------------------------------------------------------------------- processes and files


def _config(
    tmp_path: Path, cluster: SimCluster, consul: Dict[str, Any], metrics_port: int = 0
) -> Path:
    config: Dict[str, Any] = {
        "consul": {
            "servers": list(cluster.addresses),
            "connect_timeout": "1s",
            "read_timeout": "1s",
            "cooldown_initial": "200ms",
            "cooldown_max": "1s",
            # The dead-man's switch has its own tests; its session would die with every
            # snapshot_restore here. Its pool shares the watch: test_one_watch_serves_...
            "session": {"enabled": False},
            **consul,
        },
        "node": {"name": NODE, "address": "127.0.0.1"},
        "sync": {"interval": "1s", "jitter": "50ms", "state_dir": str(tmp_path / "state")},
        "discovery": {"enabled": False},
        "services": [{"name": "queue", "port": 9000, "check": {"type": "none"}}],
    }
    if metrics_port:
        config["telemetry"] = {"listen": f"127.0.0.1:{metrics_port}"}
    path = tmp_path / "regagent.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def _daemon(config: Path) -> Iterator[Path]:
    """`regagent run`, its JSON log in a file (`daemon_process`)."""
    with daemon_process(config) as daemon:
        yield daemon.log_path


def _credential_metrics(port: int) -> Dict[Tuple[str, str], float]:
    """(metric name, credential label) -> value, from the daemon's metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, sample.labels["credential"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("regagent_credential_")
    }


def _events(log: Path, name: Optional[str] = None) -> List[Dict[str, Any]]:
    found = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [e for e in found if name is None or e["event"] == name]


def _eventually(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    wait_for(what, condition, timeout)


def _registered(cluster: SimCluster, token: str = "") -> bool:
    data = cluster.get(cluster.live_server(), f"/v1/catalog/node/{NODE}?stale", token=token)
    return data is not None and "queue-9000" in data["Services"]


def _replace(path: Path, text: str) -> None:
    """A rotation tool's write: a new file renamed over the old one."""
    new = path.with_name(f".{path.name}.new")
    new.write_text(text)
    new.chmod(0o600)
    os.replace(new, path)


def _writes(cluster: SimCluster) -> int:
    return int(cluster.stats()["writes_applied"])


def _no_secret(log: Path) -> None:
    text = log.read_text()
    for secret in SECRETS:
        assert secret not in text


def _later_cycles(cluster: SimCluster, count: int = 3) -> None:
    """Waits until the daemon has asked the emulator for its node `count` more times."""

    def reads() -> int:
        return sum(
            n for key, n in cluster.stats()["endpoints"].items() if "/v1/catalog/node/" in key
        )

    start = reads()
    _eventually(lambda: reads() >= start + count, f"{count} more cycles")


# ---------------------------------------------------------------------- token: in process


def test_a_rename_into_place_is_seen_even_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(OLD)
    credentials = Credentials(ConsulConfig(token_file=str(token)))
    assert credentials.token == OLD and credentials.refresh() is False
    stat = token.stat()
    new = tmp_path / "token.new"
    new.write_text(NEW)  # same length as OLD
    os.utime(new, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(new, token)
    assert credentials.refresh() is True
    assert credentials.token == NEW
    assert OLD not in repr(credentials) and NEW not in repr(credentials)


def test_a_half_written_token_keeps_the_old_one_and_is_reported_once(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(OLD + "\n")
    credentials = Credentials(ConsulConfig(token_file=str(token)))
    with capture_logs() as logs:
        token.write_text("")  # truncated by the writer, not yet written
        for _ in range(3):
            assert credentials.refresh() is False
        assert credentials.token == OLD
        assert credentials.snapshot()["token"].rejected is True
        token.write_text(NEW + "\nsecond line\n")
        assert credentials.refresh() is False
        token.write_text(NEW + "\n")
        assert credentials.refresh() is True
    assert credentials.token == NEW
    assert credentials.snapshot()["token"].rejected is False
    events = [(e["event"], e.get("problem", "")) for e in logs]
    assert events == [
        ("credential_not_rotated", f"token file {token} is empty"),
        ("credential_not_rotated", f"token file {token} holds 2 lines; it must be exactly one "
         "line (no comments, no blank lines)"),
        ("credential_rotated", ""),
    ]  # fmt: skip
    assert not any(secret in repr(logs) for secret in SECRETS)


def test_a_refused_tls_file_is_named_and_only_the_file_at_fault_shows_as_refused(
    tls_files: TLSFiles, tmp_path: Path
) -> None:
    first = issue_client_certificate(tls_files, tmp_path / "pki", "regagent-a")
    other = issue_client_certificate(tls_files, tmp_path / "pki", "regagent-b")
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client-key.pem"
    _replace(ca, tls_files.ca.read_text())
    _rotate_pair(cert, key, *first)
    tls = TLSConfig(ca_file=str(ca), cert_file=str(cert), key_file=str(key))
    credentials = Credentials(ConsulConfig(scheme="https", tls=tls))
    context = credentials.context

    def refused() -> Dict[str, bool]:
        return {name: state.rejected for name, state in credentials.snapshot().items()}

    whole = tls_files.ca.read_text()
    with capture_logs() as logs:
        _replace(ca, whole[: len(whole) // 3])
        assert credentials.refresh() is False
        assert refused() == {"ca": True, "cert": False}
        _replace(ca, whole)
        _replace(cert, other[0].read_text())  # with the old key
        assert credentials.refresh() is False
        assert refused() == {"ca": False, "cert": True}
        assert credentials.refresh() is False  # read again, not said again
        _replace(key, other[1].read_text())
        assert credentials.refresh() is True
        assert refused() == {"ca": False, "cert": False}
    assert credentials.context is not context
    assert [(e["event"], e["credential"]) for e in logs] == [
        ("credential_not_rotated", "ca"),
        ("credential_not_rotated", "cert"),
        ("credential_rotated", "ca"),
        ("credential_rotated", "cert"),
    ]
    assert logs[0]["problem"] == f"CA file {ca} holds a PEM certificate that is cut off"
    assert "does not match the certificate" in logs[1]["problem"]
    assert "PRIVATE KEY" not in repr(logs)


def test_a_tls_file_that_cannot_be_used_at_start_is_a_configuration_error_naming_its_key(
    tls_files: TLSFiles, tmp_path: Path
) -> None:
    first = issue_client_certificate(tls_files, tmp_path / "pki", "regagent-a")
    other = issue_client_certificate(tls_files, tmp_path / "pki", "regagent-b")
    expired = issue_client_certificate(tls_files, tmp_path / "pki", "old", valid_seconds=-30)
    garbled = tmp_path / "garbled.pem"
    garbled.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    missing = tmp_path / "missing.pem"

    def problem(ca: Path, cert: Path, key: Path) -> str:
        tls = TLSConfig(ca_file=str(ca), cert_file=str(cert), key_file=str(key))
        with pytest.raises(ConfigError) as raised:
            Credentials(ConsulConfig(scheme="https", tls=tls))
        [line] = raised.value.problems
        return line

    assert problem(missing, *first) == (
        f"consul.tls.ca_file: cannot read CA file {missing}: No such file or directory"
    )
    assert problem(tls_files.ca, garbled, first[1]) == (
        f"consul.tls.cert_file: certificate file {garbled} certificate 1 is not a valid X.509 "
        "certificate"
    )
    assert problem(tls_files.ca, first[0], missing) == (
        f"consul.tls.key_file: cannot read key file {missing}: No such file or directory"
    )
    assert problem(tls_files.ca, first[0], other[1]).startswith(
        f"consul.tls.key_file: key file {other[1]} does not match the certificate in {first[0]} "
        "(subject CN=regagent-a, expires "
    )
    # An expired certificate is not refused at start: the daemon starts and waits for a new one.
    tls = TLSConfig(ca_file=str(tls_files.ca), cert_file=str(expired[0]), key_file=str(expired[1]))
    assert Credentials(ConsulConfig(scheme="https", tls=tls)).context is not None


def test_status_with_a_missing_ca_file_says_so_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "regagent.yaml"
    missing = tmp_path / "missing-ca.pem"
    consul = {"servers": ["127.0.0.1:1"], "scheme": "https", "tls": {"ca_file": str(missing)}}
    config.write_text(yaml.safe_dump({"consul": consul, "node": {"name": NODE}}))
    result = subprocess.run(
        [sys.executable, "-m", "regagent", "-c", str(config), "status"],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "crashed" not in result.stderr
    assert f"consul.tls.ca_file: cannot read CA file {missing}" in result.stderr


@pytest.fixture
def acl_cluster(consul_cluster: SimCluster) -> SimCluster:
    consul_cluster.set_acl(_acl(OLD, NEW))
    return consul_cluster


def test_a_403_after_the_file_changed_is_sent_again_with_the_new_token(
    acl_cluster: SimCluster, tmp_path: Path
) -> None:
    """The file changed after the cycle's stat and the old token is already revoked: the
    request that gets 403 re-reads the file and is sent again; the caller sees no failure."""
    token = tmp_path / "token"
    token.write_text(OLD)
    config = ConsulConfig(servers=tuple(acl_cluster.addresses), token_file=str(token))
    credentials = Credentials(config)
    pool = ServerPool(config, credentials.token, credentials=credentials)
    pool.new_cycle()
    assert stale_get_nodes(pool) is not None
    _replace(token, NEW)
    acl_cluster.set_acl(_acl(NEW))  # the old token is revoked
    acl_cluster.reset_stats()
    assert stale_get_nodes(pool) is not None  # no new_cycle: the 403 made it re-read
    assert credentials.token == NEW
    assert sum(acl_cluster.stats()["endpoints"].values()) == 2  # the 403, then the answer


def test_a_token_just_rotated_in_gets_one_more_try_and_then_is_refused_once(
    acl_cluster: SimCluster, tmp_path: Path
) -> None:
    """A 403 to a token rotated in moments ago is sent once more (its replication may lag);
    after that a 403 is a refusal at once, and Consul not knowing the token is said once."""
    token = tmp_path / "token"
    token.write_text(OLD)
    config = ConsulConfig(servers=tuple(acl_cluster.addresses), token_file=str(token))
    credentials = Credentials(config)
    pool = ServerPool(config, credentials.token, credentials=credentials)
    _replace(token, UNKNOWN)
    pool.new_cycle()  # the stat takes the new token in
    acl_cluster.reset_stats()
    with capture_logs() as logs:
        with pytest.raises(ConsulRefused, match="ACL not found"):
            stale_get_nodes(pool)
        assert sum(acl_cluster.stats()["endpoints"].values()) == 2  # sent once more
        with pytest.raises(ConsulRefused, match="ACL not found"):
            stale_get_nodes(pool)
        assert sum(acl_cluster.stats()["endpoints"].values()) == 3  # not again
    assert [e["event"] for e in logs] == ["consul_request_resent", "credential_refused"]
    assert logs[1]["path"] == str(token)
    assert not any(secret in repr(logs) for secret in SECRETS)


def test_one_watch_serves_the_pool_and_the_dead_mans_switch_pool(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(OLD)
    config = Config(
        consul=ConsulConfig(servers=("127.0.0.1:1", "127.0.0.1:2"), token_file=str(token))
    )
    policy = RetryPolicy.from_config(config)
    main = make_pool(config, policy)
    switch = make_pool(config, policy, main.credentials)
    assert switch.credentials is main.credentials
    _replace(token, NEW)
    with capture_logs() as logs:
        switch.new_cycle()  # the switch's thread may be the first to see it
        main.new_cycle()
    assert [server.client.token for server in main.servers + switch.servers] == [NEW] * 4
    assert [e["event"] for e in logs] == ["credential_rotated"]


def test_a_403_to_a_request_in_flight_while_another_thread_rotated_is_sent_again(
    tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text(OLD)
    credentials = Credentials(ConsulConfig(token_file=str(token)))
    credentials.worked()
    sent_at = credentials.generation  # a request leaves with the old token...
    _replace(token, NEW)
    assert credentials.refresh() is True  # ...another pool's thread takes the new one in
    credentials.worked()  # and succeeds with it
    refused = ErrorAnswer(403, "ACL not found")
    assert credentials.retry_after(refused, sent_at) is True
    assert credentials.retry_after(refused, credentials.generation) is False
    assert credentials.retry_after(ErrorAnswer(500, "boom"), sent_at) is False


def stale_get_nodes(pool: ServerPool) -> Any:
    return pool.call("nodes", lambda client: stale_get(client, "/v1/catalog/nodes", list)).data


# ---------------------------------------------------------------------- token: the daemon


def test_daemon_rotates_its_token_without_a_failed_cycle(
    acl_cluster: SimCluster, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    _replace(token, OLD + "\n")
    port = free_port()
    config = _config(tmp_path, acl_cluster, {"token_file": str(token)}, metrics_port=port)
    empty = acl_cluster.snapshot_save()
    with _daemon(config) as log:
        _eventually(lambda: _registered(acl_cluster, ADMIN), "registered with the old token")
        started = _credential_metrics(port)
        assert started[("regagent_credential_rejected", "token")] == 0
        loaded = started[("regagent_credential_loaded_timestamp_seconds", "token")]
        _replace(token, NEW + "\n")
        acl_cluster.set_acl(_acl(NEW))  # revoked at once: a cycle in flight gets 403s
        _eventually(lambda: bool(_events(log, "credential_rotated")), "the rotation logged")
        _eventually(  # the endpoint renders at most once a second
            lambda: (
                _credential_metrics(port)[("regagent_credential_loaded_timestamp_seconds", "token")]
                > loaded
            ),
            "the new load time exported",
        )
        writes = _writes(acl_cluster)
        acl_cluster.snapshot_restore(empty)  # the catalog forgets: the daemon must write again
        _eventually(lambda: _registered(acl_cluster, ADMIN), "registered with the new token")
        assert _writes(acl_cluster) > writes
        _later_cycles(acl_cluster)
    assert _events(log, "sync_failed") == []
    [rotated] = _events(log, "credential_rotated")
    assert rotated["credential"] == "token" and rotated["path"] == str(token)
    _no_secret(log)


def test_daemon_rotates_the_token_of_its_dead_mans_switch_too(
    acl_cluster: SimCluster, tmp_path: Path
) -> None:
    """The switch renews its session through a pool of its own: the rotated token reaches it
    from the same watch, and its renewals go on after the old token is revoked."""
    acl_cluster.set_acl(_acl(OLD, NEW, sessions=True))
    token = tmp_path / "token"
    _replace(token, OLD + "\n")
    switch = {"session": {"enabled": True, "ttl": "10s"}}
    config = _config(tmp_path, acl_cluster, {"token_file": str(token), **switch})

    def renewals() -> int:
        found = acl_cluster.stats()["endpoints"].items()
        return sum(n for key, n in found if key.startswith("PUT /v1/session/renew"))

    with _daemon(config) as log:
        _eventually(lambda: bool(_events(log, "session_created")), "the switch armed")
        _replace(token, NEW + "\n")
        acl_cluster.set_acl(_acl(NEW, sessions=True))
        _eventually(lambda: bool(_events(log, "credential_rotated")), "the rotation logged")
        start = renewals()
        _eventually(lambda: renewals() >= start + 2, "two renewals with the new token", 30)
        _later_cycles(acl_cluster)
    assert [e["event"] for e in _events(log) if e["level"] == "error"] == []
    assert _events(log, "session_lost") == []
    assert len(_events(log, "credential_rotated")) == 1
    _no_secret(log)


def test_daemon_reports_a_denied_token_once_and_recovers_when_fixed(
    acl_cluster: SimCluster, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    _replace(token, OLD + "\n")
    config = _config(tmp_path, acl_cluster, {"token_file": str(token)})
    with _daemon(config) as log:
        _eventually(lambda: _registered(acl_cluster, ADMIN), "registered")
        _replace(token, UNKNOWN + "\n")
        _eventually(lambda: bool(_events(log, "sync_failed")), "the failure logged")
        _later_cycles(acl_cluster, 4)
        [failed] = _events(log, "sync_failed")
        assert "refused the request (403): ACL not found" in failed["error"]
        [refused] = _events(log, "credential_refused")
        assert refused["path"] == str(token) and refused["answer"] == "ACL not found"
        _replace(token, NEW + "\n")
        _eventually(lambda: bool(_events(log, "sync_recovered")), "recovered")
    assert len(_events(log, "credential_rotated")) == 2
    _no_secret(log)


def test_daemon_keeps_its_token_while_the_new_file_is_half_written(
    acl_cluster: SimCluster, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    _replace(token, OLD + "\n")
    port = free_port()
    config = _config(tmp_path, acl_cluster, {"token_file": str(token)}, metrics_port=port)
    refused = ("regagent_credential_rejected", "token")
    with _daemon(config) as log:
        _eventually(lambda: _registered(acl_cluster, ADMIN), "registered")
        token.write_text("")  # opened for writing, nothing written yet
        _eventually(lambda: bool(_events(log, "credential_not_rotated")), "the problem logged")
        _later_cycles(acl_cluster, 4)  # cycles go on with the old token
        assert _credential_metrics(port)[refused] == 1
        [problem] = _events(log, "credential_not_rotated")
        assert problem["problem"] == f"token file {token} is empty"
        assert problem["kept"].startswith("the token loaded at ")
        assert problem["level"] == "warning"
        token.write_text(NEW + "\n")
        _eventually(lambda: bool(_events(log, "credential_rotated")), "the rotation logged")
        _later_cycles(acl_cluster)
        assert _credential_metrics(port)[refused] == 0
    assert _events(log, "sync_failed") == []
    _no_secret(log)


# ---------------------------------------------------------------------- TLS: the daemon


@pytest.fixture
def mtls_cluster(tls_files: TLSFiles) -> Iterator[SimCluster]:
    """3 HTTPS servers that require a client certificate of the test CA."""
    with SimCluster(
        servers=3,
        election_delay="0.3s",
        ae_interval="0.5s",
        tls_cert=str(tls_files.server_cert),
        tls_key=str(tls_files.server_key),
        tls_client_ca=str(tls_files.ca),
        tls_ca=str(tls_files.ca),
        tls_client_cert=str(tls_files.client_cert),
        tls_client_key=str(tls_files.client_key),
    ) as cluster:
        yield cluster


def _tls_config(
    tmp_path: Path, cluster: SimCluster, files: TLSFiles, cert: Path, key: Path, *, port: int = 0
) -> Tuple[Path, Path, Path]:
    """The daemon's configuration with its own copies of the client certificate and key."""
    live_cert, live_key = tmp_path / "live" / "client.pem", tmp_path / "live" / "client-key.pem"
    live_cert.parent.mkdir()
    _replace(live_key, key.read_text())
    _replace(live_cert, cert.read_text())
    tls = {"ca_file": str(files.ca), "cert_file": str(live_cert), "key_file": str(live_key)}
    config = _config(tmp_path, cluster, {"scheme": "https", "tls": tls}, metrics_port=port)
    return config, live_cert, live_key


def _rotate_pair(live_cert: Path, live_key: Path, cert: Path, key: Path) -> None:
    _replace(live_key, key.read_text())
    _replace(live_cert, cert.read_text())


def test_daemon_renews_its_client_certificate_before_it_expires_without_a_failed_cycle(
    mtls_cluster: SimCluster, tls_files: TLSFiles, tmp_path: Path
) -> None:
    # long enough for a slow start on a busy machine, short enough to expire during the test
    short = issue_client_certificate(tls_files, tmp_path / "pki", "regagent-a", valid_seconds=20)
    renewed = issue_client_certificate(tls_files, tmp_path / "pki", "regagent-b")
    port = free_port()
    config, live_cert, live_key = _tls_config(tmp_path, mtls_cluster, tls_files, *short, port=port)
    [first] = certificates_in(short[0].read_text())
    [second] = certificates_in(renewed[0].read_text())
    [ca] = certificates_in(tls_files.ca.read_text())
    not_after = first.not_after
    expiry = ("regagent_credential_expiry_timestamp_seconds", "cert")
    empty = mtls_cluster.snapshot_save()
    with _daemon(config) as log:
        _eventually(lambda: _registered(mtls_cluster), "registered with the first certificate")
        started = _credential_metrics(port)
        assert started[expiry] == first.not_after
        assert started[("regagent_credential_not_before_timestamp_seconds", "cert")] == (
            first.not_before
        )
        assert started[("regagent_credential_expiry_timestamp_seconds", "ca")] == ca.not_after
        _rotate_pair(live_cert, live_key, *renewed)
        _eventually(lambda: bool(_events(log, "credential_rotated")), "the renewal logged")
        _eventually(  # the endpoint renders at most once a second
            lambda: _credential_metrics(port)[expiry] == second.not_after,
            "the new expiry exported",
        )
        renewed_metrics = _credential_metrics(port)
        loaded = "regagent_credential_loaded_timestamp_seconds"
        assert renewed_metrics[(loaded, "cert")] > started[(loaded, "cert")]
        assert renewed_metrics[(loaded, "ca")] == started[(loaded, "ca")]  # the CA did not change
        _eventually(lambda: time.time() > not_after + 1, "the first certificate expired", 45)
        mtls_cluster.snapshot_restore(empty)  # writes needed after the old one expired
        _eventually(lambda: _registered(mtls_cluster), "registered with the renewed one")
        _later_cycles(mtls_cluster)
    assert _events(log, "sync_failed") == []
    assert _events(log, "credential_expired") == []
    [rotated] = _events(log, "credential_rotated")
    assert rotated["credential"] == "cert" and rotated["path"] == str(live_cert)
    assert rotated["certificate"].startswith("subject CN=regagent-b, expires ")


def test_daemon_reports_an_expired_certificate_once_and_recovers_with_a_new_one(
    mtls_cluster: SimCluster, tls_files: TLSFiles, tmp_path: Path
) -> None:
    short = issue_client_certificate(tls_files, tmp_path / "pki", "regagent-a", valid_seconds=15)
    renewed = issue_client_certificate(tls_files, tmp_path / "pki", "regagent-b")
    config, live_cert, live_key = _tls_config(tmp_path, mtls_cluster, tls_files, *short)
    with _daemon(config) as log:
        _eventually(lambda: _registered(mtls_cluster), "registered")
        _eventually(lambda: bool(_events(log, "sync_failed")), "the failure logged", 45)
        _eventually(lambda: bool(_events(log, "credential_expired")), "the expiry logged")
        _later_cycles_failing(log)
        _rotate_pair(live_cert, live_key, *renewed)
        _eventually(lambda: bool(_events(log, "sync_recovered")), "recovered")
    [failed] = _events(log, "sync_failed")
    assert "the server says the client certificate has expired" in failed["error"]
    [expired] = _events(log, "credential_expired")
    assert expired["path"] == str(live_cert) and expired["level"] == "error"
    [rotated] = _events(log, "credential_rotated")
    assert rotated["certificate"].startswith("subject CN=regagent-b")


def test_a_tls_failure_after_the_files_changed_is_sent_again_with_the_new_certificate(
    mtls_cluster: SimCluster, tls_files: TLSFiles, tmp_path: Path
) -> None:
    """The pool starts with a client certificate of another CA, which the servers refuse; the
    right one is written after the cycle's stat: the refused request re-reads the files and is
    sent again on the same server, and the caller sees no failure."""
    foreign = make_tls_files(tmp_path / "foreign")
    live_cert, live_key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    _rotate_pair(live_cert, live_key, foreign.client_cert, foreign.client_key)
    tls = TLSConfig(ca_file=str(tls_files.ca), cert_file=str(live_cert), key_file=str(live_key))
    config = ConsulConfig(servers=tuple(mtls_cluster.addresses), scheme="https", tls=tls)
    credentials = Credentials(config)
    pool = ServerPool(config, credentials.token, credentials=credentials)
    pool.new_cycle()
    _rotate_pair(live_cert, live_key, tls_files.client_cert, tls_files.client_key)
    mtls_cluster.reset_stats()
    with capture_logs() as logs:
        assert stale_get_nodes(pool) is not None
    assert sum(mtls_cluster.stats()["endpoints"].values()) == 1  # the handshake failed before
    assert [e["event"] for e in logs] == ["credential_rotated", "consul_request_resent"]
    assert [server.failures for server in pool.servers] == [0, 0, 0]


def _later_cycles_failing(log: Path, count: int = 3) -> None:
    """Lets `count` more cycles fail: they are logged at debug only, and a handshake the
    emulator refuses is not in its records, so this waits `count` sync intervals."""
    time.sleep(count * 1.1)


def test_daemon_keeps_its_certificate_when_the_key_does_not_match_or_the_file_is_cut(
    mtls_cluster: SimCluster, tls_files: TLSFiles, tmp_path: Path
) -> None:
    first = issue_client_certificate(tls_files, tmp_path / "pki", "regagent-a")
    other = issue_client_certificate(tls_files, tmp_path / "pki", "regagent-b")
    port = free_port()
    config, live_cert, _ = _tls_config(tmp_path, mtls_cluster, tls_files, *first, port=port)
    empty = mtls_cluster.snapshot_save()
    with _daemon(config) as log:
        _eventually(lambda: _registered(mtls_cluster), "registered")
        _replace(live_cert, other[0].read_text())  # the new certificate, the old key
        _eventually(lambda: bool(_events(log, "credential_not_rotated")), "the mismatch logged")
        _later_cycles(mtls_cluster)
        in_use = _credential_metrics(port)
        assert in_use[("regagent_credential_rejected", "cert")] == 1
        assert in_use[("regagent_credential_expiry_timestamp_seconds", "cert")] == (
            certificates_in(first[0].read_text())[0].not_after
        )
        whole = other[0].read_text()
        _replace(live_cert, whole[: len(whole) // 2])  # a certificate cut off half-way
        _eventually(lambda: len(_events(log, "credential_not_rotated")) == 2, "the cut logged")
        mtls_cluster.snapshot_restore(empty)
        _eventually(lambda: _registered(mtls_cluster), "written with the old certificate")
        _later_cycles(mtls_cluster)
    assert _events(log, "sync_failed") == []
    assert _events(log, "credential_rotated") == []
    mismatch, cut = _events(log, "credential_not_rotated")
    assert mismatch["credential"] == "cert"
    assert mismatch["problem"].startswith(
        f"key file {live_cert.parent / 'client-key.pem'} does not match the certificate in "
        f"{live_cert} (subject CN=regagent-b, expires "
    )
    assert cut["problem"] == f"certificate file {live_cert} holds a PEM certificate that is cut off"
    assert "PRIVATE KEY" not in log.read_text()


def test_a_reload_with_a_broken_ca_file_is_rejected_and_the_daemon_keeps_syncing(
    mtls_cluster: SimCluster, tls_files: TLSFiles, tmp_path: Path
) -> None:
    first = issue_client_certificate(tls_files, tmp_path / "pki", "regagent-a")
    config, _, _ = _tls_config(tmp_path, mtls_cluster, tls_files, *first)
    ca = tmp_path / "live" / "ca.pem"
    _replace(ca, tls_files.ca.read_text())
    settings = yaml.safe_load(config.read_text())
    settings["consul"]["tls"]["ca_file"] = str(ca)
    config.write_text(yaml.safe_dump(settings))
    empty = mtls_cluster.snapshot_save()
    with daemon_process(config) as daemon:
        log = daemon.log_path
        _eventually(lambda: _registered(mtls_cluster), "registered")
        whole = tls_files.ca.read_text()
        _replace(ca, whole[: len(whole) // 2])
        daemon.signal(signal.SIGHUP)
        _eventually(lambda: bool(_events(log, "config_reload_rejected")), "the reload rejected")
        mtls_cluster.snapshot_restore(empty)
        _eventually(lambda: _registered(mtls_cluster), "written with the CA in use")
        assert daemon.proc.poll() is None
    [problem] = _events(log, "config_reload_problem")
    assert problem["problem"] == (
        f"consul.tls.ca_file: CA file {ca} holds a PEM certificate that is cut off"
    )
    assert _events(log, "sync_failed") == []
    assert [e["credential"] for e in _events(log, "credential_not_rotated")] == ["ca"]
