"""Who may open an association: the `dicom.peers` allowlist and the called AE title check, and
the A-ASSOCIATE-RJ each refusal is answered with. Both intake engines (`agent.dicom.scp` on
pynetdicom's association machinery, `agent.dicom.engine` on its codec) ask this one class, so
they refuse the same peers for the same reasons.

Checked in this order: the source address is in `dicom.peers` (else reason 0x01
no-reason-given: an unknown machine learns nothing about what would have been accepted), the
calling AE title is listed with that address (0x03 calling-AE-title-not-recognised), the
called AE title is ours (0x07 called-AE-title-not-recognised). The association cap
(`AssociationLimit`) comes after these: rejected-transient from the service provider
(presentation), 0x02 local-limit-exceeded.

Must not import pynetdicom: plain addresses and numbers.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from agent.rejections import RejectionReason

__all__ = ["REJECT", "IPAddress", "PeerAccess", "source_of"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REJECTED_PERMANENT, _REJECTED_TRANSIENT = 0x01, 0x02
_SERVICE_USER, _SERVICE_PROVIDER_PRESENTATION = 0x01, 0x03
_NO_REASON_GIVEN, _CALLING_AE_NOT_RECOGNISED, _CALLED_AE_NOT_RECOGNISED = 0x01, 0x03, 0x07
_LOCAL_LIMIT_EXCEEDED = 0x02

REJECT: dict[RejectionReason, tuple[int, int, int]] = {
    RejectionReason.unlisted_address: (_REJECTED_PERMANENT, _SERVICE_USER, _NO_REASON_GIVEN),
    RejectionReason.calling_ae_not_recognised: (
        _REJECTED_PERMANENT,
        _SERVICE_USER,
        _CALLING_AE_NOT_RECOGNISED,
    ),
    RejectionReason.called_ae_not_recognised: (
        _REJECTED_PERMANENT,
        _SERVICE_USER,
        _CALLED_AE_NOT_RECOGNISED,
    ),
    RejectionReason.association_limit: (
        _REJECTED_TRANSIENT,
        _SERVICE_PROVIDER_PRESENTATION,
        _LOCAL_LIMIT_EXCEEDED,
    ),
}
"""(result, source, diagnostic) of the A-ASSOCIATE-RJ sent for each refusal."""


class PeerAccess:
    """The allowlist of (AE title, host) and whether the called AE title must be ours."""

    def __init__(
        self, ae_title: str, peers: Sequence[tuple[str, str]], *, require_called_aet: bool
    ) -> None:
        """Nothing resolves until `resolve`. With `peers` the called AE title is always
        checked: an allowlisted site asked for strict checks."""
        self._ae_title = ae_title.strip()
        self._peers = tuple(peers)
        self._require_called_aet = require_called_aet or bool(self._peers)
        self._allowed: frozenset[tuple[str, IPAddress]] = frozenset()
        self._allowed_hosts: frozenset[IPAddress] = frozenset()

    def resolve(self) -> None:
        """Resolve the peers' host names; raises `ValueError` naming one that does not."""
        allowed: set[tuple[str, IPAddress]] = set()
        for ae_title, host in self._peers:
            try:
                addresses = {_normalise(info[4][0]) for info in socket.getaddrinfo(host, None)}
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"dicom.peers: host {host!r} (AE title {ae_title!r}) does not resolve "
                    f"({exc}); use the peer's static IP address or fix its DNS name"
                ) from exc
            allowed.update((ae_title.strip(), address) for address in addresses)
        self._allowed = frozenset(allowed)
        self._allowed_hosts = frozenset(address for _, address in allowed)

    def refusal(self, *, calling: str, called: str, host: str) -> RejectionReason | None:
        """Why this request is refused (allowlist, then called AE title); None if it is not."""
        if self._allowed:
            try:
                address = _normalise(host)
            except ValueError:
                return RejectionReason.unlisted_address
            if address not in self._allowed_hosts:
                return RejectionReason.unlisted_address
            if (calling.strip(), address) not in self._allowed:
                return RejectionReason.calling_ae_not_recognised
        if self._require_called_aet and called.strip() != self._ae_title:
            return RejectionReason.called_ae_not_recognised
        return None


def source_of(host: str) -> str:
    """The address a rejection is counted under ("unknown" when `host` is no IP address)."""
    try:
        return str(_normalise(host))
    except ValueError:
        return "unknown"


def _normalise(address: str | int) -> IPAddress:
    parsed = ipaddress.ip_address(str(address).split("%", 1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed
