"""Salted, deterministic replacements: UIDs and the per-site date offset.

Both are pure functions of the site's salt and the original value, so every instance of a
series gets the same new Series Instance UID, on any agent, after any restart, for a late
instance too; a different salt gives different UIDs. Stdlib only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

__all__ = ["date_offset_days", "remap_uid", "shift_date", "shift_datetime"]

# UIDs under the 2.25 root are derived from a 128-bit number (PS3.5 B.2): no registered root
# is needed and the result is at most 44 characters, inside the 64 a UID may have.
_UUID_ROOT = "2.25."
_MAX_OFFSET_DAYS = 3650


def remap_uid(salt: str, uid: str) -> str:
    """The replacement of `uid` for the site whose salt is `salt`."""
    digest = hmac.new(salt.encode(), b"uid\x00" + uid.strip("\x00 ").encode(), hashlib.sha256)
    return _UUID_ROOT + str(int.from_bytes(digest.digest()[:16], "big"))


def date_offset_days(salt: str) -> int:
    """How many days (1..3650) this site's dates move back under modified dates."""
    digest = hmac.new(salt.encode(), b"date-offset", hashlib.sha256).digest()
    return 1 + int.from_bytes(digest[:8], "big") % _MAX_OFFSET_DAYS


def shift_date(value: str, days: int) -> str:
    """Move a DA value (YYYYMMDD) `days` back; raises ValueError for anything else."""
    day = dt.datetime.strptime(value.strip(), "%Y%m%d").date()
    return (day - dt.timedelta(days=days)).strftime("%Y%m%d")


def shift_datetime(value: str, days: int) -> str:
    """Move a DT value `days` back, keeping its time and offset part as written."""
    text = value.strip()
    if len(text) < 8:
        raise ValueError("a DT value starts with YYYYMMDD")
    return shift_date(text[:8], days) + text[8:]
