"""The one allowlist of field names whose values never identify a patient.

Log event keys (`common.logging`) and trace attributes (`common.telemetry`) are filtered
against it: a value under any other name is redacted or dropped. Add a name only when no value
stored under it can carry a DICOM value that identifies a patient (names, IDs, dates,
descriptions, comments, routing strings, UIDs). Stdlib only: imports nothing.
"""

from __future__ import annotations

__all__ = ["SAFE_KEYS"]

SAFE_KEYS: frozenset[str] = frozenset(
    {
        # DICOM transport: node identities and protocol outcomes, never dataset values.
        "ae_title",
        "peer_ae",
        "peer_host",
        "port",
        "sop_class",
        "transfer_syntax",
        "status",
        # Series are correlated by a hash (`common.logging.series_key`), never by their UID.
        "series_key",
        "count",
        "instance_count",
        "bytes",
        # Pipeline bookkeeping.
        "duration_ms",
        "attempt",
        "reason",
        "routing_reason",
        "state",
        "mode",
        "destination",
        "file_id",
        "path",
        "error",
        # Fleet and service identity.
        "site",
        "agent_id",
        "revision",
        "url",
        "method",
        "status_code",
        "service",
        "version",
        # Alerts: a webhook by its number in alerts.webhooks (its URL may hold a secret).
        "webhook",
    }
)
