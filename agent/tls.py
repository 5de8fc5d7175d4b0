"""How the agent trusts its control plane over HTTPS and wss://: one TLS context for the link
and every HTTP request (config fetch, uploads).

With `control_plane_ca` the agent trusts that CA only (a private CA of the deployment);
without it, the system's trust store. Certificates and host names are always verified, and
TLS 1.2 is the least version accepted. Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class ControlPlaneTrustError(ValueError):
    """The CA file to trust the control plane by cannot be used."""


def control_plane_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context: the private CA in `ca_file`, else the system's CAs."""
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ControlPlaneTrustError(
            f"control_plane_ca: cannot load {ca_file} as PEM CA certificates ({exc});"
            " give the file holding the CA that signed the control plane's certificate"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def describe_verification_failure(error: ssl.SSLCertVerificationError, where: str) -> str:
    """What to tell an operator when the control plane's certificate was refused at `where`
    (a URL without query, or a name such as "the store")."""
    return (
        f"the control plane's TLS certificate at {where} was refused ({error.verify_message});"
        " if it is signed by a private CA, give that CA with --ca-file"
        " (setting control_plane_ca)"
    )


def verification_failure(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate refusal behind an HTTP client's error, if that is what it was."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
