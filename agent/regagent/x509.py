"""What a PEM certificate file says about itself: each certificate's subject and validity.

Credential rotation needs to know whether a freshly written certificate is whole and current,
and when the one in use expires (a metric an alert reads). Python's `ssl` module parses a
certificate only on a live connection, so this reads the few fields it needs from the DER
encoding itself: Certificate -> tbsCertificate -> validity and subject (RFC 5280, 4.1). Pure:
text in, facts out; a file cut off half-way or not a certificate at all raises ValueError.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import re
from dataclasses import dataclass
from typing import List, Tuple

_PEM_BLOCK = re.compile(
    r"-----BEGIN CERTIFICATE-----(?P<body>[A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----"
)
_SEQUENCE, _SET, _OID, _UTC_TIME, _GENERALIZED_TIME = 0x30, 0x31, 0x06, 0x17, 0x18
_VERSION = 0xA0  # [0] EXPLICIT Version, absent in v1 certificates
_COMMON_NAME = bytes([0x55, 0x04, 0x03])  # 2.5.4.3
_STRING_TYPES = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1", 0x1E: "utf-16-be"}


@dataclass(frozen=True)
class CertificateFacts:
    """One certificate: its subject's common name (or "" without one) and its validity, as
    unix times."""

    subject: str
    not_before: float
    not_after: float


def certificates_in(text: str) -> List[CertificateFacts]:
    """Every certificate of a PEM file, in file order (a chain: the leaf first); ValueError if
    there is none or one is not a whole certificate."""
    blocks = list(_PEM_BLOCK.finditer(text))
    begun = text.count("-----BEGIN CERTIFICATE-----")
    if not begun:
        raise ValueError("holds no PEM certificate")
    if begun != len(blocks):
        raise ValueError("holds a PEM certificate that is cut off")
    facts = []
    for number, block in enumerate(blocks, 1):
        try:
            der = base64.b64decode("".join(block.group("body").split()), validate=True)
            facts.append(certificate_facts(der))
        except (ValueError, binascii.Error, IndexError, UnicodeDecodeError):
            raise ValueError(f"certificate {number} is not a valid X.509 certificate") from None
    return facts


def certificate_facts(der: bytes) -> CertificateFacts:
    """Subject and validity of one DER certificate; ValueError/IndexError when malformed."""
    certificate = _only(der, _SEQUENCE)
    tbs, _ = _element(certificate, 0, _SEQUENCE)
    position = 0
    if tbs[0] == _VERSION:
        _, position = _element(tbs, position)
    _, position = _element(tbs, position)  # serialNumber
    _, position = _element(tbs, position, _SEQUENCE)  # signature algorithm
    _, position = _element(tbs, position, _SEQUENCE)  # issuer
    validity, position = _element(tbs, position, _SEQUENCE)
    subject, _ = _element(tbs, position, _SEQUENCE)
    not_before, after = _time(validity, 0)
    not_after, _ = _time(validity, after)
    return CertificateFacts(_common_name(subject), not_before, not_after)


def _header(data: bytes, position: int) -> Tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the element at `position`."""
    tag, first = data[position], data[position + 1]
    start = position + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("DER element runs past its container")
    return tag, start, end


def _element(data: bytes, position: int, tag: int = -1) -> Tuple[bytes, int]:
    """(value, position after it) of the element at `position`, checking its tag if given."""
    found, start, end = _header(data, position)
    if tag >= 0 and found != tag:
        raise ValueError(f"expected DER tag {tag:#x}, found {found:#x}")
    return data[start:end], end


def _only(data: bytes, tag: int) -> bytes:
    value, end = _element(data, 0, tag)
    if end != len(data):
        raise ValueError("trailing bytes after the certificate")
    return value


def _time(data: bytes, position: int) -> Tuple[float, int]:
    """A UTCTime or GeneralizedTime (both "Z", as RFC 5280 requires) as a unix time."""
    tag, start, end = _header(data, position)
    text = data[start:end].decode("ascii")
    if tag == _UTC_TIME and len(text) == 13:
        year = int(text[:2])
        year += 1900 if year >= 50 else 2000
        rest = text[2:]
    elif tag == _GENERALIZED_TIME and len(text) == 15:
        year, rest = int(text[:4]), text[4:]
    else:
        raise ValueError("unsupported certificate time")
    if not rest.endswith("Z") or not rest[:-1].isdigit():
        raise ValueError("unsupported certificate time")
    month, day, hour, minute, second = (int(rest[i : i + 2]) for i in range(0, 10, 2))
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))), end


def _common_name(name: bytes) -> str:
    """The last CN of a Name (SEQUENCE OF SET OF SEQUENCE {OID, value}), or ""."""
    found = ""
    position = 0
    while position < len(name):
        rdn, position = _element(name, position, _SET)
        inner = 0
        while inner < len(rdn):
            pair, inner = _element(rdn, inner, _SEQUENCE)
            oid, after = _element(pair, 0, _OID)
            if oid == _COMMON_NAME:
                tag, start, end = _header(pair, after)
                encoding = _STRING_TYPES.get(tag, "latin-1")
                found = pair[start:end].decode(encoding, errors="replace")
    return found
