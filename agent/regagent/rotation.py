"""What credential rotation decides, without touching a file: whether a file was replaced, whether
a new certificate may be used, and how one is named in a log line.

A rotation tool (Vault agent, step-ca, consul-template) replaces a file in place or renames a
new one over it; the stat fields below change in either case, so comparing them per cycle is
enough to notice it, without inotify. The reading, the TLS context and the log lines are in
`regagent.consul.credentials`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from regagent.rules import utc_text
from regagent.x509 import CertificateFacts

# Consul's 403 texts for a token it does not know and for one that may not do this request.
ACL_NOT_FOUND = "ACL not found"
PERMISSION_DENIED = "Permission denied"


@dataclass(frozen=True)
class FileStamp:
    """What `stat` says about a credential file. A rename into place changes the inode (and
    ctime); a rewrite in place changes mtime, ctime and usually the size."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


def is_auth_refusal(status: int, message: str) -> bool:
    """True for the 403s a rotated (or not yet rotated) token causes."""
    return status == 403 and (ACL_NOT_FOUND in message or PERMISSION_DENIED in message)


def certificate_problem(facts: Sequence[CertificateFacts], now: float) -> Optional[str]:
    """Why a new client certificate file must not replace the one in use, or None. The leaf
    (the first certificate) must be valid now: switching to an expired one never helps."""
    if not facts:
        return "holds no certificate"
    leaf = facts[0]
    if now >= leaf.not_after:
        return f"holds a certificate that expired at {utc_text(leaf.not_after)}"
    if now < leaf.not_before:
        return f"holds a certificate that is not valid before {utc_text(leaf.not_before)}"
    return None


def first_to_expire(facts: Sequence[CertificateFacts]) -> Optional[CertificateFacts]:
    """The certificate of a bundle (a CA file may hold several) that expires first."""
    return min(facts, key=lambda fact: fact.not_after, default=None)


def describe_certificate(facts: Sequence[CertificateFacts]) -> str:
    """The leaf named for a log line: subject and expiry, never more."""
    if not facts:
        return "no certificate"
    leaf = facts[0]
    subject = f"subject CN={leaf.subject}" if leaf.subject else "no subject CN"
    return f"{subject}, expires {utc_text(leaf.not_after)}"
