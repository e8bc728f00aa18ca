"""The ACL token and the TLS files, re-read when they change: rotation without a reload.

`Credentials` holds what the pool's clients send (the token) and connect with (the TLS
context), and the files they came from with the `stat` of each as it was read. `refresh` (once
per sync cycle, and at once after an authentication or TLS failure) stats the files; a changed
one is read and checked, and a usable new credential is handed to every client for its next
request. A file that is empty, cut off, not PEM, an expired certificate or a key that does not
match its certificate is not used: the credential in use stays, the problem is logged once per
version of the file (never the token; a certificate by subject, expiry and path) and the file
is read again at the next refresh. What a rotation is and what makes a certificate usable is
decided in `regagent.rotation`.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import structlog

from regagent.config.model import ConsulConfig
from regagent.config.token import load_token, token_file_problem_text, token_file_text
from regagent.consul.answers import classify_refusal, describe_failure, describe_ssl
from regagent.consul.transport import TLSOptions, tls_context
from regagent.errors import ConfigError
from regagent.rotation import (
    ACL_NOT_FOUND,
    FileStamp,
    certificate_problem,
    describe_certificate,
    first_to_expire,
    is_auth_refusal,
)
from regagent.rules import token_text, utc_text
from regagent.x509 import CertificateFacts, certificates_in

log = structlog.get_logger(__name__)

# The `credential` label of the metrics, and the word in log lines. "cert" is the client
# certificate and its key, which rotate together.
TOKEN, CA, CERT = "token", "ca", "cert"
PEM_MAX_BYTES = 1024 * 1024  # a CA bundle is a few hundred kilobytes at most

Clock = Callable[[], float]


class _Unusable(Exception):
    """A new credential file that must not replace the one in use; the message says why, and
    `setting` names the consul.tls key of the file at fault."""

    def __init__(self, credential: str, setting: str, problem: str) -> None:
        super().__init__(problem)
        self.credential = credential
        self.setting = setting
        self.problem = problem


@dataclass
class CredentialState:
    """One credential as the metrics show it: when it was last loaded (unix time), for a
    certificate its validity, and whether the file on disk is refused (the previous credential
    still in use)."""

    loaded_at: float
    not_before: Optional[float] = None
    not_after: Optional[float] = None
    rejected: bool = False


@dataclass
class _InUse:
    """The stamps of the files the credentials in use were read from, and what was reported."""

    stamps: Dict[str, Optional[FileStamp]] = field(default_factory=dict)
    reported: Dict[str, Tuple[Tuple[Optional[FileStamp], ...], str]] = field(default_factory=dict)
    expired_reported: Optional[float] = None  # the not_after already reported as passed
    refused_reported: bool = False  # "Consul does not know this token" said for this token
    token_unconfirmed: bool = False  # a new token no request has succeeded with yet


class Credentials:
    """The token and TLS context for the pool's clients, following their files."""

    def __init__(self, config: ConsulConfig, *, clock: Clock = time.time) -> None:
        """Reads everything once, as the configuration names it. A file that cannot be used is
        a ConfigError naming its key (`consul.token_file`, `consul.tls.ca_file`, ...): the
        command says so in one line, a reload is rejected and the running configuration kept.
        An expired client certificate is not refused here: the daemon starts, says so, and
        takes in the renewed one when it is written."""
        self.clock = clock
        self._lock = threading.RLock()
        self._clients: List[Any] = []
        self._in_use = _InUse()
        self.generation = 0  # how many times new credentials were handed to the clients
        self._token_file = config.token_file or None
        tls = config.tls
        self._tls: Optional[TLSOptions] = None
        if config.scheme == "https":
            self._tls = TLSOptions(
                verify=tls.verify,
                ca_file=tls.ca_file or None,
                cert_file=tls.cert_file or None,
                key_file=tls.key_file or None,
            )
        now = clock()
        self.state: Dict[str, CredentialState] = {}
        if self._token_file:
            self._in_use.stamps[self._token_file] = _stamp(self._token_file)
        self.token: Optional[str] = load_token(config)
        if self.token is not None:
            self.state[TOKEN] = CredentialState(now)
        self.context: Optional[ssl.SSLContext] = None
        if self._tls is not None:
            for path in self._tls_paths():
                self._in_use.stamps[path] = _stamp(path)
            self.context = self._first_context(self._tls)
            self._note_tls(now, _facts_or_none(self._tls.ca_file), self._cert_facts_at_start())

    def __repr__(self) -> str:
        files = ", ".join(self._in_use.stamps) or "none"
        return f"Credentials(files: {files})"  # never the token

    def attach(self, clients: Sequence[Any]) -> None:
        """More clients that get every new credential (`client.token`, `client.http.context`):
        a pool's, and the dead-man's switch's pool's, which share one `Credentials`."""
        with self._lock:
            self._clients.extend(clients)
            self._apply()

    def snapshot(self) -> Dict[str, CredentialState]:
        """A copy of each credential's state, for the metrics."""
        with self._lock:
            return {
                name: replace(state, rejected=name in self._in_use.reported)
                for name, state in self.state.items()
            }

    def refresh(self) -> bool:
        """Stats the files and takes in what changed and is usable; True if a credential in
        use changed (the clients have it already)."""
        with self._lock:
            changed = self._refresh_token()
            changed = self._refresh_tls() or changed
            self._check_expiry()
            if changed:
                self.generation += 1
                self._apply()
            return changed

    def retry_after(self, exc: BaseException, sent_at: Optional[int] = None) -> bool:
        """After a request failed with `exc`: whether to send it again, once. Yes for an
        authentication or TLS failure when a file changed (re-read now, or by another thread
        since the request was sent at `generation` `sent_at`), and for a 403 to a token just
        rotated in that has not worked yet (its replication may lag)."""
        kind = _credential_failure(exc)
        if kind is None:
            return False
        with self._lock:
            if self.refresh() or (sent_at is not None and sent_at != self.generation):
                return True
            if kind == TOKEN and self._in_use.token_unconfirmed:
                self._in_use.token_unconfirmed = False
                return True
            if kind == TOKEN and self._token_file and not self._in_use.refused_reported:
                refusal = classify_refusal(exc)
                if refusal is not None and ACL_NOT_FOUND in refusal[1]:
                    self._in_use.refused_reported = True
                    log.warning(
                        "credential_refused",
                        credential=TOKEN,
                        path=self._token_file,
                        loaded=utc_text(self.state[TOKEN].loaded_at)
                        if TOKEN in self.state
                        else None,
                        answer=refusal[1],
                        fix="write a token Consul knows to the file; it is read at the next cycle",
                    )
            return False

    def worked(self) -> None:
        """A request succeeded with the credentials in use."""
        self._in_use.token_unconfirmed = False

    # ------------------------------------------------------------------ token

    def _refresh_token(self) -> bool:
        path = self._token_file
        if path is None:
            return False
        stamp = _stamp(path)
        if stamp == self._in_use.stamps.get(path):
            return False
        try:
            text = token_file_text(path)
        except OSError as exc:
            return self._reject(TOKEN, (stamp,), f"cannot read {path}: {exc.strerror or exc}")
        problem = token_file_problem_text(text)
        if problem:
            return self._reject(TOKEN, (stamp,), f"token file {path} {problem}")
        self._in_use.stamps[path] = stamp
        self._in_use.reported.pop(TOKEN, None)
        token = token_text(text)
        if token == self.token:
            return False  # rewritten with the same token: nothing to do
        self.token = token
        self.state[TOKEN] = CredentialState(self.clock())
        self._in_use.token_unconfirmed = True
        self._in_use.refused_reported = False
        log.info("credential_rotated", credential=TOKEN, path=path)
        return True

    # ------------------------------------------------------------------ TLS

    def _tls_paths(self) -> List[str]:
        tls = self._tls
        if tls is None:
            return []
        return [p for p in (tls.ca_file, tls.cert_file, tls.key_file) if p]

    def _refresh_tls(self) -> bool:
        tls = self._tls
        if tls is None:
            return False
        paths = self._tls_paths()
        stamps = {path: _stamp(path) for path in paths}
        if all(stamps[path] == self._in_use.stamps.get(path) for path in paths):
            return False
        key = tuple(stamps[path] for path in paths)
        try:
            context, ca_facts, cert_facts = self._load_tls(tls)
        except _Unusable as unusable:
            if unusable.credential == CERT:  # the CA file passed its checks
                self._in_use.reported.pop(CA, None)
            return self._reject(unusable.credential, key, unusable.problem)
        now = self.clock()

        def changed(path: Optional[str]) -> bool:
            return path is not None and stamps[path] != self._in_use.stamps.get(path)

        ca_changed = changed(tls.ca_file)
        cert_changed = changed(tls.cert_file) or changed(tls.key_file)
        self._in_use.stamps.update(stamps)
        for name in (CA, CERT):
            self._in_use.reported.pop(name, None)
        self.context = context
        self._note_tls(now, ca_facts if ca_changed else None, cert_facts if cert_changed else None)
        if ca_changed:
            log.info(
                "credential_rotated", credential=CA, path=tls.ca_file,
                certificate=describe_certificate(ca_facts or []),
            )  # fmt: skip
        if cert_changed:
            log.info(
                "credential_rotated", credential=CERT, path=tls.cert_file,
                certificate=describe_certificate(cert_facts or []),
            )  # fmt: skip
        return True

    def _first_context(self, tls: TLSOptions) -> ssl.SSLContext:
        """The context at start: what the TLS library accepts is used (the expiry is not
        checked here); what it refuses is a ConfigError naming the file at fault."""
        try:
            return tls_context(tls)
        except (OSError, ssl.SSLError) as exc:
            try:
                self._load_tls(tls, check_expiry=False)
            except _Unusable as unusable:
                problem = f"consul.tls.{unusable.setting}: {unusable.problem}"
            else:
                problem = f"consul.tls: the TLS files cannot be loaded: {_why(exc)}"
            raise ConfigError([problem]) from None

    def _load_tls(
        self, tls: TLSOptions, *, check_expiry: bool = True
    ) -> Tuple[ssl.SSLContext, Optional[List[CertificateFacts]], Optional[List[CertificateFacts]]]:
        """A new context from the files as they are now, or _Unusable naming the file at fault."""
        ca_facts = cert_facts = None
        if tls.ca_file:
            ca_facts = _pem_facts(CA, "ca_file", tls.ca_file, "CA file")
            try:
                tls_context(TLSOptions(verify=tls.verify, ca_file=tls.ca_file))
            except (OSError, ssl.SSLError) as exc:
                why = f"CA file {tls.ca_file} cannot be loaded: {_why(exc)}"
                raise _Unusable(CA, "ca_file", why) from None
        if tls.cert_file:
            cert_facts = _pem_facts(CERT, "cert_file", tls.cert_file, "certificate file")
            expired = certificate_problem(cert_facts, self.clock()) if check_expiry else None
            if expired:
                raise _Unusable(CERT, "cert_file", f"certificate file {tls.cert_file} {expired}")
        if tls.key_file:
            _readable(CERT, "key_file", tls.key_file, "key file")
        try:
            context = tls_context(tls)
        except (OSError, ssl.SSLError) as exc:
            if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
                problem = (
                    f"key file {tls.key_file} does not match the certificate in {tls.cert_file} "
                    f"({describe_certificate(cert_facts or [])})"
                )
            else:
                problem = (
                    f"certificate {tls.cert_file} with key {tls.key_file} cannot be loaded: "
                    f"{_why(exc)}"
                )
            raise _Unusable(CERT, "key_file", problem) from None
        return context, ca_facts, cert_facts

    def _cert_facts_at_start(self) -> Optional[List[CertificateFacts]]:
        tls = self._tls
        return _facts_or_none(tls.cert_file) if tls is not None else None

    def _note_tls(
        self,
        now: float,
        ca_facts: Optional[List[CertificateFacts]],
        cert_facts: Optional[List[CertificateFacts]],
    ) -> None:
        """Records when the CA and the client certificate were loaded (if they were)."""
        tls = self._tls
        if tls is None:
            return
        if tls.ca_file and (ca_facts is not None or CA not in self.state):
            self.state[CA] = _certificate_state(now, first_to_expire(ca_facts or []))
        if tls.cert_file and (cert_facts is not None or CERT not in self.state):
            self.state[CERT] = _certificate_state(now, cert_facts[0] if cert_facts else None)
            self._in_use.expired_reported = None

    def _check_expiry(self) -> None:
        """Says once that the client certificate in use has expired (nothing newer usable)."""
        tls, state = self._tls, self.state.get(CERT)
        if tls is None or state is None or state.not_after is None:
            return
        if self.clock() < state.not_after or self._in_use.expired_reported == state.not_after:
            return
        self._in_use.expired_reported = state.not_after
        log.error(
            "credential_expired",
            credential=CERT,
            path=tls.cert_file,
            expired=utc_text(state.not_after),
            fix="renew the certificate; a new file is used at the next cycle, without a reload",
        )

    # ------------------------------------------------------------------ shared

    def _reject(self, credential: str, key: Tuple[Optional[FileStamp], ...], problem: str) -> bool:
        """Keeps the credential in use; says so once for this version of the file(s)."""
        if self._in_use.reported.get(credential) != (key, problem):
            self._in_use.reported[credential] = (key, problem)
            log.warning(
                "credential_not_rotated",
                credential=credential,
                problem=problem,
                kept=f"the {credential} loaded at {self._loaded_text(credential)}",
                retry="at the next cycle",
            )
        return False

    def _loaded_text(self, credential: str) -> str:
        state = self.state.get(credential)
        return utc_text(state.loaded_at) if state is not None else "start"

    def _apply(self) -> None:
        for client in self._clients:
            client.token = self.token
            http: Any = getattr(client, "http", None)
            if self.context is not None and hasattr(http, "context"):
                http.context = self.context


def _certificate_state(now: float, facts: Optional[CertificateFacts]) -> CredentialState:
    if facts is None:
        return CredentialState(now)
    return CredentialState(now, facts.not_before, facts.not_after)


def _stamp(path: str) -> Optional[FileStamp]:
    """The file's stamp, or None when it cannot be stat'ed (then any readable file differs)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return FileStamp(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _readable(credential: str, setting: str, path: str, what: str) -> bytes:
    """The file's first bytes (at most PEM_MAX_BYTES + 1), or _Unusable saying why not."""
    try:
        with open(path, "rb") as handle:
            return handle.read(PEM_MAX_BYTES + 1)
    except OSError as exc:
        problem = f"cannot read {what} {path}: {exc.strerror or exc}"
        raise _Unusable(credential, setting, problem) from None


def _pem_facts(credential: str, setting: str, path: str, what: str) -> List[CertificateFacts]:
    raw = _readable(credential, setting, path, what)
    if len(raw) > PEM_MAX_BYTES:
        raise _Unusable(credential, setting, f"{what} {path} is larger than 1 MiB")
    try:
        return certificates_in(raw.decode("ascii", errors="replace"))
    except ValueError as exc:
        raise _Unusable(credential, setting, f"{what} {path} {exc}") from None


def _facts_or_none(path: Optional[str]) -> Optional[List[CertificateFacts]]:
    """At start only for the metrics: the TLS library has accepted the file already."""
    if not path:
        return None
    try:
        return _pem_facts(CERT, "", path, "file")
    except _Unusable as unusable:
        log.debug("certificate_facts_unreadable", path=path, problem=unusable.problem)
        return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return describe_ssl(exc).removeprefix("TLS error: ")
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return str(exc)


def _credential_failure(exc: BaseException) -> Optional[str]:
    """TOKEN for a 403 about the token, CERT for a TLS failure, else None."""
    refusal = classify_refusal(exc)
    if refusal is not None:
        return TOKEN if is_auth_refusal(*refusal) else None
    return CERT if describe_failure(exc).startswith("TLS error") else None
