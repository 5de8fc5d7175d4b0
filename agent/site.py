"""One validated revision of the site config, as the agent runs it, and its one validation.

`parse_snapshot` is the one validation of a config, whichever way it came (the link, the
first-start HTTP fetch, the last-known-good file): the `SiteConfig` model
(`common.config.validate_site_config`) plus the DICOM keywords it names, checked against the
data dictionary. Free of HTTP and DICOM-network code, so both sides of the agent can use it.

Must not import pynetdicom, HTTP libraries, fastapi or control_plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.headers import keyword_vr
from common.config import ConfigError, SiteConfig, dictionary_problems, validate_site_config

__all__ = ["DEFAULT_TIMEZONE", "ConfigRefused", "SiteSnapshot", "parse_snapshot"]

DEFAULT_TIMEZONE = "UTC"


@dataclass(frozen=True, slots=True)
class SiteSnapshot:
    """One validated revision of the site config, with the site's name and timezone."""

    site: str
    revision: int
    timezone: str
    config: SiteConfig
    # The site's de-identification salt; None only in a last-known-good written before salts
    # were delivered, which a de-identifying profile then refuses to run on.
    deid_salt: str | None = field(default=None, repr=False)

    @property
    def zone(self) -> ZoneInfo:
        """The site's timezone (working hours are wall-clock times in it)."""
        return ZoneInfo(self.timezone)

    def to_json(self) -> dict[str, Any]:
        """The JSON document stored as the last-known-good config."""
        return {
            "site": self.site,
            "revision": self.revision,
            "timezone": self.timezone,
            "config": self.config.model_dump(mode="json"),
            "deid_salt": self.deid_salt,
        }


class ConfigRefused(Exception):
    """The control plane answered with a config this agent cannot accept."""


class _Answer(BaseModel):
    """The envelope of `GET /api/v1/agent/config` (and of the stored last-known-good)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    site: str = Field(min_length=1)
    revision: int = Field(ge=0)
    timezone: str | None = None
    config: dict[str, Any]
    deid_salt: str | None = None

    @field_validator("timezone")
    @classmethod
    def _iana_zone(cls, value: str | None) -> str | None:
        if value is not None and not _known_zone(value):
            raise ValueError(f"{value!r} is not an IANA timezone name such as 'Europe/Berlin'")
        return value


def parse_snapshot(document: Any) -> SiteSnapshot:
    """Validate a config answer (or a stored last-known-good); raise `ConfigRefused` if invalid."""
    try:
        answer = _Answer.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'answer'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise ConfigRefused(f"not a config answer ({problems})") from exc
    try:
        config = validate_site_config(answer.config)
        unknown = dictionary_problems(config, keyword_vr)
        if unknown:
            raise ConfigError(unknown)
    except ConfigError as exc:
        raise ConfigRefused(str(exc)) from exc
    return SiteSnapshot(
        site=answer.site,
        revision=answer.revision,
        timezone=answer.timezone or DEFAULT_TIMEZONE,
        config=config,
        deid_salt=answer.deid_salt,
    )


def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True
