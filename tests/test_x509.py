"""What a certificate file says (regagent.x509) and what makes a new one usable
(regagent.rotation): certificates made by the openssl command at test time, cut and spoiled."""

from __future__ import annotations

import calendar
import subprocess
import time
from pathlib import Path

import pytest

from regagent.rotation import certificate_problem, describe_certificate
from regagent.x509 import CertificateFacts, certificates_in
from tls_pki import TLSFiles, issue_client_certificate


def test_certificate_facts_are_what_openssl_wrote(tls_files: TLSFiles, tmp_path: Path) -> None:
    cert, _ = issue_client_certificate(tls_files, tmp_path, "facts-check", valid_seconds=3600)
    openssl = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-enddate"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    end = time.strptime(openssl.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y GMT")
    [facts] = certificates_in(cert.read_text())
    assert facts.subject == "facts-check"
    assert facts.not_after == float(calendar.timegm(end))
    assert facts.not_after - facts.not_before == 3660
    whole = cert.read_text()
    for broken in ("", "not a certificate", whole[: len(whole) // 2], whole.replace("M", "A", 5)):
        with pytest.raises(ValueError):
            certificates_in(broken)


def test_a_new_certificate_must_be_valid_now() -> None:
    facts = CertificateFacts("x", not_before=100.0, not_after=200.0)
    assert certificate_problem([facts], 150.0) is None
    assert "expired at 1970-01-01T00:03:20Z" in str(certificate_problem([facts], 200.0))
    assert "not valid before" in str(certificate_problem([facts], 99.0))
    assert certificate_problem([], 150.0) == "holds no certificate"


def test_a_bundle_is_read_whole_and_a_certificate_is_named_by_subject_and_expiry(
    tls_files: TLSFiles, tmp_path: Path
) -> None:
    first, _ = issue_client_certificate(tls_files, tmp_path, "leaf", valid_seconds=600)
    bundle = first.read_text() + tls_files.ca.read_text()
    leaf, ca = certificates_in(bundle)
    assert (leaf.subject, ca.subject) == ("leaf", "regagent test CA")
    assert describe_certificate([leaf, ca]).startswith("subject CN=leaf, expires 20")
    with pytest.raises(ValueError, match="cut off"):
        certificates_in(bundle[: len(bundle) - 40])
