"""The one error of de-identification, safe to show anywhere."""

from __future__ import annotations

__all__ = ["DeidError"]


class DeidError(Exception):
    """An instance that could not be de-identified, so nothing of it may leave the site.

    ``reason`` says what went wrong in terms of tags, rules and the profile, never with a
    DICOM value: it goes to logs, health reports and API answers as it is.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
