"""regagent over TLS: real `regagent` processes against the emulator with HTTPS servers.

Certificates come from the `tls_files` fixture (a throwaway CA made by openssl at test time).
What a user sees on failure is asserted literally: exit 1 and one line naming the TLS problem.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from consulsim import SimCluster
from helpers.consul import fast_cluster, node_services, regagent, static, write_config
from tls_pki import TLSFiles

HTTPS = "https"


def _loopback6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _cluster(files: TLSFiles, *, require_client_cert: bool) -> SimCluster:
    """Not started yet: used as a context manager, which stops it by pid even on failure."""
    client_ca = str(files.ca) if require_client_cert else None
    return fast_cluster(
        tls_cert=str(files.server_cert),
        tls_key=str(files.server_key),
        tls_client_ca=client_ca,
        tls_ca=str(files.ca),
        tls_client_cert=str(files.client_cert),
        tls_client_key=str(files.client_key),
    )


@pytest.fixture
def tls_cluster(tls_files: TLSFiles) -> Iterator[SimCluster]:
    """3 emulated servers speaking HTTPS with a certificate from the test CA."""
    with _cluster(tls_files, require_client_cert=False) as cluster:
        yield cluster


@pytest.fixture
def mtls_cluster(tls_files: TLSFiles) -> Iterator[SimCluster]:
    """Like `tls_cluster`, but client certificates from the test CA are required."""
    with _cluster(tls_files, require_client_cert=True) as cluster:
        yield cluster


def _config(tmp_path: Path, cluster: SimCluster, tls: Dict[str, Any], scheme: str = HTTPS) -> Path:
    return write_config(
        tmp_path, cluster, [static("queue", 9000)], consul={"scheme": scheme, "tls": tls}
    )


def _one_clean_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    # Neither requests' wrapper names nor OpenSSL's codes reach the user.
    for soup in ("HTTPSConnectionPool", "Max retries", "SSLError(", "_ssl.c", "[SSL:"):
        assert soup not in lines[0]
    return lines[0]


def test_https_with_the_ca_file_registers_then_writes_nothing(
    tls_cluster: SimCluster, tls_files: TLSFiles, tmp_path: Path
) -> None:
    config = _config(tmp_path, tls_cluster, {"ca_file": str(tls_files.ca)})
    first = regagent(config, "sync")
    assert first.returncode == 0, first.stderr
    assert set(node_services(tls_cluster)) == {"queue-9000"}
    tls_cluster.reset_stats()
    second = regagent(config, "sync")
    assert second.returncode == 0, second.stderr
    assert "In sync" in second.stdout
    assert tls_cluster.stats()["writes_applied"] == 0


def test_verify_is_on_by_default_and_an_unknown_ca_fails_cleanly(
    tls_cluster: SimCluster, tmp_path: Path
) -> None:
    result = regagent(_config(tmp_path, tls_cluster, {}), "sync")
    assert result.returncode == 1
    line = _one_clean_line(result.stderr)
    assert line.startswith("regagent: no Consul server reachable for ")
    # every server tried and named; the shared reason said once
    assert (
        f"{', '.join(tls_cluster.addresses)}: TLS error: certificate verify failed "
        "(unable to get local issuer certificate)" in line
    )
    assert node_services(tls_cluster) == {}


def test_verify_false_accepts_a_certificate_from_an_unknown_ca(
    tls_cluster: SimCluster, tmp_path: Path
) -> None:
    result = regagent(_config(tmp_path, tls_cluster, {"verify": False}), "sync")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "InsecureRequestWarning" not in result.stderr  # one structured warning at most
    assert set(node_services(tls_cluster)) == {"queue-9000"}


def test_servers_requiring_client_certificates_refuse_none_and_accept_ours(
    mtls_cluster: SimCluster, tls_files: TLSFiles, tmp_path: Path
) -> None:
    without = regagent(_config(tmp_path, mtls_cluster, {"ca_file": str(tls_files.ca)}), "sync")
    assert without.returncode == 1
    line = _one_clean_line(without.stderr)
    assert (
        f"{', '.join(mtls_cluster.addresses)}: TLS error: the server requires a client certificate "
        "(tlsv13 alert certificate required)" in line
    )
    assert node_services(mtls_cluster) == {}

    tls = {
        "ca_file": str(tls_files.ca),
        "cert_file": str(tls_files.client_cert),
        "key_file": str(tls_files.client_key),
    }
    with_cert = regagent(_config(tmp_path, mtls_cluster, tls), "sync")
    assert with_cert.returncode == 0, with_cert.stderr
    assert set(node_services(mtls_cluster)) == {"queue-9000"}


def test_plain_http_to_https_servers_is_refused_with_consuls_answer(
    tls_cluster: SimCluster, tmp_path: Path
) -> None:
    tls_cluster.reset_stats()
    result = regagent(_config(tmp_path, tls_cluster, {}, scheme="http"), "sync")
    assert result.returncode == 1
    line = _one_clean_line(result.stderr)
    assert line == (
        f"regagent: Consul {tls_cluster.addresses[0]} refused the request (400): "
        "Client sent an HTTP request to an HTTPS server."
    )
    assert tls_cluster.stats()["requests"] == 0  # answered before any request reached Consul


def test_failover_over_tls_past_a_stopped_a_black_holed_and_a_slow_server(
    tls_cluster: SimCluster, tls_files: TLSFiles, tmp_path: Path
) -> None:
    config = _config(tmp_path, tls_cluster, {"ca_file": str(tls_files.ca)})
    tls_cluster.stop_server(0)
    tls_cluster.blackhole(1)
    tls_cluster.wait_for_leader()
    through_third = regagent(config, "sync")
    assert through_third.returncode == 0, through_third.stderr
    assert tls_cluster.addresses[2] in through_third.stdout

    tls_cluster.start_server(0)
    tls_cluster.blackhole(1, on=False)
    tls_cluster.slow(0, 1.5)  # longer than the configured 1s read timeout
    write_config(
        tmp_path,
        tls_cluster,
        [static("queue", 9000), static("cache", 6379)],
        consul={"scheme": HTTPS, "tls": {"ca_file": str(tls_files.ca)}},
    )
    through_second = regagent(config, "sync")
    assert through_second.returncode == 0, through_second.stderr
    assert tls_cluster.addresses[1] in through_second.stdout
    assert set(node_services(tls_cluster)) == {"queue-9000", "cache-6379"}


def test_verify_off_is_one_warning_per_configuration_and_pools_share_nothing() -> None:
    from structlog.testing import capture_logs

    from regagent.config.model import ConsulConfig, TLSConfig
    from regagent.consul.pool import ServerPool

    config = ConsulConfig(
        servers=("127.0.0.1:1", "127.0.0.1:2"), scheme="https", tls=TLSConfig(verify=False)
    )
    with capture_logs() as logs:
        ServerPool(config)
        ServerPool(config)  # a second app in the same process warns too: no shared flag
    assert [e["event"] for e in logs].count("consul_tls_verify_off") == 2


needs_ipv6 = pytest.mark.skipif(not socket.has_ipv6 or not _loopback6(), reason="no ::1 here")


@needs_ipv6
@pytest.mark.parametrize("scheme", ["http", HTTPS])
def test_servers_written_as_ipv6_in_brackets_are_reached(
    scheme: str, tls_files: TLSFiles, tmp_path: Path
) -> None:
    """`[::1]:8500`, as the validator asks IPv6 servers to be written: reached over plain HTTP
    and over HTTPS, where the certificate's IP SAN ::1 must match (verify on)."""
    tls = (
        {"tls_cert": str(tls_files.server_cert), "tls_key": str(tls_files.server_key)}
        if scheme == HTTPS
        else {}
    )
    cluster = fast_cluster(bind="::1", control_bind="127.0.0.1", tls_ca=str(tls_files.ca), **tls)
    with cluster:
        assert all(address.startswith("[::1]:") for address in cluster.addresses)
        config = _config(tmp_path, cluster, {"ca_file": str(tls_files.ca)}, scheme=scheme)
        result = regagent(config, "sync")
        assert result.returncode == 0, result.stderr
        assert set(node_services(cluster)) == {"queue-9000"}
        status = regagent(config, "status")
        assert status.returncode == 0, status.stdout + status.stderr
