"""Certificates made for a test: a CA and leaf certificates it signs (valid, expired, renewed).

Built with `cryptography`; every file is PEM in the test's directory. Leaf certificates carry
127.0.0.1 as an IP subject alternative name and both server and client key usage, so one
helper serves the SCP, the SCU and dcmtk's storescu.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.dicom.tls import TlsFiles

__all__ = ["CertificateAuthority", "Issued", "ServerFiles", "issue_server_certificate"]


@dataclass(frozen=True)
class Issued:
    """A leaf certificate and its key, as files."""

    cert: Path
    key: Path
    not_after: dt.datetime

    def tls_files(self, ca: Path, *, require_client_cert: bool = True) -> TlsFiles:
        """This certificate as the agent's `dicom.tls`, trusting `ca`."""
        return TlsFiles(self.cert, self.key, ca, require_client_cert)


class CertificateAuthority:
    """A self-signed CA written to `directory/<name>-ca.pem`."""

    def __init__(self, directory: Path, name: str = "test") -> None:
        self.directory = directory
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        self._subject = subject
        self._certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / f"{name}-ca.pem"
        self.cert.write_bytes(self._certificate.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        common_name: str,
        *,
        valid_for: dt.timedelta = dt.timedelta(days=365),
        expired: bool = False,
        cert_path: Path | None = None,
        key_path: Path | None = None,
    ) -> Issued:
        """A leaf for `common_name`; `expired` makes one that ended yesterday."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        if expired:
            not_before, not_after = now - dt.timedelta(days=30), now - dt.timedelta(days=1)
        else:
            not_before, not_after = now - dt.timedelta(hours=1), now + valid_for
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        cert = cert_path or self.directory / f"{self.name}-{common_name}.crt"
        key_file = key_path or self.directory / f"{self.name}-{common_name}.key"
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return Issued(cert, key_file, not_after)


@dataclass(frozen=True)
class ServerFiles:
    """PEM files of a server certificate, its key, and the CA that signed it."""

    ca: Path
    cert: Path
    key: Path


def issue_server_certificate(directory: Path) -> ServerFiles:
    """A new CA and a certificate it signs for 127.0.0.1 and localhost, valid now."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = CertificateAuthority(directory)
    server = authority.issue("server")
    return ServerFiles(ca=authority.cert, cert=server.cert, key=server.key)
