"""A throwaway PKI for TLS tests, made with the ``openssl`` command at test time.

Every run makes a fresh CA, a server certificate for 127.0.0.1 and ::1 (IP SANs, as Python's
and Go's clients check the IP against the SAN, never the CN) and a client certificate, each
valid for one day, in a temporary directory. No key is ever committed.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

OPENSSL_TIMEOUT = 30.0

# Extensions strict verifiers (Python 3.13's VERIFY_X509_STRICT, Go) insist on: a CA marked as
# one, key usages, and key identifiers linking each certificate to its issuer.
_SERVER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
_CLIENT_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the PEM files; keys are mode 0600."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str) -> None:
    result = subprocess.run(
        ["openssl", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=OPENSSL_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _new_key_args(key: Path) -> List[str]:
    return [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
    ]


def _issue(
    directory: Path, name: str, subject: str, extensions: str, *, ca: Path, ca_key: Path
) -> None:
    key, csr, ext = (
        directory / f"{name}-key.pem",
        directory / f"{name}.csr",
        directory / f"{name}.ext",
    )
    ext.write_text(extensions)
    _openssl("req", "-new", *_new_key_args(key), "-subj", subject, "-out", str(csr))
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "1",
        "-extfile", str(ext), "-out", str(directory / f"{name}.pem"),
    )  # fmt: skip
    key.chmod(0o600)


def make_tls_files(directory: Path) -> TLSFiles:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    _openssl(
        "req", "-x509", "-new", *_new_key_args(ca_key), "-days", "1",
        "-subj", "/CN=regagent test CA", "-out", str(ca),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    ca_key.chmod(0o600)
    _issue(directory, "server", "/CN=server.dc1.consul", _SERVER_EXT, ca=ca, ca_key=ca_key)
    _issue(directory, "client", "/CN=regagent", _CLIENT_EXT, ca=ca, ca_key=ca_key)
    return TLSFiles(
        ca=ca,
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )


_CA_CONFIG = """\
[ca]
default_ca = issuing
[issuing]
database = {directory}/index.txt
new_certs_dir = {directory}
serial = {directory}/serial
default_md = sha256
policy = any_name
unique_subject = no
[any_name]
commonName = supplied
"""


def issue_client_certificate(
    files: TLSFiles, directory: Path, name: str, *, valid_seconds: int = 86400
) -> Tuple[Path, Path]:
    """A new client certificate and key from the test CA, valid from a minute ago for
    `valid_seconds` (short-lived ones expire during a test): (certificate, key) in `directory`.
    ``openssl ca`` is used because only it takes an exact end date on OpenSSL 3.0."""
    directory.mkdir(parents=True, exist_ok=True)
    key, csr, ext = (directory / f"{name}-key.pem", directory / f"{name}.csr",
                     directory / f"{name}.ext")  # fmt: skip
    ext.write_text(_CLIENT_EXT)
    _openssl("req", "-new", *_new_key_args(key), "-subj", f"/CN={name}", "-out", str(csr))
    key.chmod(0o600)
    state = directory / f"{name}-ca"
    state.mkdir()
    (state / "index.txt").write_text("")
    (state / "serial").write_text(secrets.token_hex(8) + "\n")
    config = state / "ca.cnf"
    config.write_text(_CA_CONFIG.format(directory=state))
    now = time.time()
    cert = directory / f"{name}.pem"
    _openssl(
        "ca", "-batch", "-config", str(config), "-notext",
        "-cert", str(files.ca), "-keyfile", str(files.ca.parent / "ca-key.pem"),
        "-startdate", _asn1_time(now - 60), "-enddate", _asn1_time(now + valid_seconds),
        "-extfile", str(ext), "-in", str(csr), "-out", str(cert),
    )  # fmt: skip
    return cert, key


def _asn1_time(unix_time: float) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(unix_time))
