"""TLS for DICOM (PS3.15 Annex B secure transport): the SCP's and SCU's `ssl.SSLContext`s.

`TlsFiles` names the PEM files of `dicom.tls`; `TlsContexts` turns them into contexts and
reloads them when a config revision names other files or when the files' content changes (a
renewed certificate written over the old one), so the next association uses the new
certificate without a restart. A reload that fails keeps the contexts in force and says why in
`problem`; a config revision whose files cannot be loaded is refused (`TlsError`).

Both sides: TLS 1.2 at least, TLS 1.2 suites limited to ECDHE key exchange with AEAD ciphers
(TLS 1.3 suites are all of that kind); the peer's certificate must chain to `ca` and be inside
its validity period. The SCU checks the source's certificate against `ca` but not its host name:
DICOM peers are addressed by IP address and AE title, and the CA is the site's own.

Imports the standard library, `common` and `cryptography` (to read a certificate's expiry), no
pynetdicom: the SCP and SCU hand the contexts over.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from common.config import DicomTls

__all__ = [
    "MODERN_TLS12_CIPHERS",
    "TlsContexts",
    "TlsError",
    "TlsFiles",
    "certificate_not_after",
    "handshake_problem",
]

# OpenSSL names: forward secrecy and authenticated encryption only (BCP 195 / Mozilla
# "intermediate"); dcmtk's default BCP 195 profile offers these too.
MODERN_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1"


class TlsError(ValueError):
    """The files of `dicom.tls` cannot be used; the message names the file and the fix."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM files of `dicom.tls` and whether the SCP demands a client certificate."""

    cert: Path
    key: Path
    ca: Path
    require_client_cert: bool = True

    @classmethod
    def of(cls, config: DicomTls | None) -> TlsFiles | None:
        """The files named by the `dicom.tls` section; None without one."""
        if config is None:
            return None
        return cls(Path(config.cert), Path(config.key), Path(config.ca), config.require_client_cert)


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The SCP's context; raises `TlsError` naming the file that cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    _load(context, files)
    context.verify_mode = ssl.CERT_REQUIRED if files.require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The SCU's context (it presents `cert` and checks the peer against `ca`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    context.check_hostname = False
    _load(context, files)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def certificate_not_after(path: Path) -> float:
    """When the first certificate in the PEM file `path` expires (epoch seconds)."""
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(
            f"dicom.tls.cert: cannot read a PEM certificate from {path} ({exc}); give the "
            "agent's certificate as a PEM file readable by the agent"
        ) from exc
    return certificate.not_valid_after_utc.timestamp()


class TlsContexts:
    """The current server and client contexts of one `TlsFiles`, reloaded when the files change.

    Thread-safe: association threads call `server()` / `client()`; the runtime calls `use()`.
    """

    def __init__(self, files: TlsFiles) -> None:
        """Load `files` now; raises `TlsError` when they cannot be used."""
        self._lock = threading.Lock()
        self._files = files
        self._stamp = _stamp(files)
        self._server, self._client, self._not_after = _load_all(files)
        self.problem: str | None = None
        """Why the last reload failed (the previous contexts stay in force); None when fine."""

    @property
    def files(self) -> TlsFiles:
        """The files in force."""
        return self._files

    @property
    def not_after(self) -> float:
        """When the certificate in force expires (epoch seconds)."""
        self._refresh()
        return self._not_after

    def use(self, files: TlsFiles) -> None:
        """Switch to `files` for the next association; raises `TlsError` (and keeps the
        contexts in force) when they cannot be used."""
        loaded = _load_all(files)
        stamp = _stamp(files)
        with self._lock:
            self._files, self._stamp = files, stamp
            self._server, self._client, self._not_after = loaded
            self.problem = None

    def server(self) -> ssl.SSLContext:
        """The SCP's context for a new association."""
        self._refresh()
        return self._server

    def client(self) -> ssl.SSLContext:
        """The SCU's context for a new association."""
        self._refresh()
        return self._client

    def _refresh(self) -> None:
        with self._lock:
            files = self._files
            stamp = _stamp(files)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self._server, self._client, self._not_after = _load_all(files)
            except TlsError as exc:
                self.problem = f"{exc}; the previous certificate stays in use"
            else:
                self.problem = None


def _load_all(files: TlsFiles) -> tuple[ssl.SSLContext, ssl.SSLContext, float]:
    return server_context(files), client_context(files), certificate_not_after(files.cert)


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(MODERN_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.verify_flags |= ssl.VERIFY_X509_STRICT


def _load(context: ssl.SSLContext, files: TlsFiles) -> None:
    try:
        context.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(
            f"dicom.tls.cert/key: cannot use the certificate {files.cert} with the key "
            f"{files.key} ({_reason(exc)}); give PEM files readable by the agent, the key "
            "unencrypted and matching the certificate"
        ) from exc
    try:
        context.load_verify_locations(cafile=str(files.ca))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(
            f"dicom.tls.ca: cannot read CA certificates from {files.ca} ({_reason(exc)}); "
            "give a PEM file readable by the agent"
        ) from exc


def _reason(exc: OSError | ssl.SSLError) -> str:
    return exc.strerror or getattr(exc, "reason", None) or str(exc)


def _stamp(files: TlsFiles) -> tuple[tuple[int, int, int] | None, ...]:
    """What changes when a file is rewritten or replaced (size, mtime, inode)."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in (files.cert, files.key, files.ca):
        try:
            stat = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(stamps)


def handshake_problem(exc: BaseException) -> str:
    """Why an SCP's TLS handshake failed, for the log (no certificate content)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no TLS handshake within the ARTIM timeout"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return type(exc).__name__
