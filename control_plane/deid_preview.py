"""The de-identification preview: a site's current profile, with the site's salt, applied to one
instance sent by an admin, answered attribute by attribute.

The salt is read from the site row and handed to the engine only; it is never part of an
answer, an error or a log line. The engine (`common.deid`) is the agent's own, so the preview
shows exactly what the agent would upload. Must not import FastAPI.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from common.deid.engine import Deidentifier, DeidError
from control_plane.errors import ControlPlaneError
from control_plane.fleet import config_revisions, sites

__all__ = [
    "MAX_PREVIEW_BYTES",
    "AttributeChangePublic",
    "DeidPreview",
    "PreviewTooLargeError",
    "UndeidentifiableInstanceError",
    "preview_site_deid",
]

# A preview reads the whole instance into memory; larger files are not what it is for.
MAX_PREVIEW_BYTES = 64 * 1024 * 1024


class UndeidentifiableInstanceError(ControlPlaneError):
    """The site's profile cannot be applied to the instance (the agent would fail it too)."""

    http_status = 422


class PreviewTooLargeError(ControlPlaneError):
    """An instance over `MAX_PREVIEW_BYTES`."""

    http_status = 413


class AttributeChangePublic(BaseModel):
    """One attribute the profile removes, replaces or adds (see `common.deid.preview`)."""

    path: str
    tag: str
    keyword: str
    vr: str
    action: Literal["removed", "replaced", "added"]
    before: str | None
    after: str | None


class DeidPreview(BaseModel):
    """Answer of `POST /api/v1/sites/{site}/deid/preview`."""

    site: str
    revision: int
    profile: Literal["none", "basic", "document"]
    options: list[str]
    changes: list[AttributeChangePublic]


async def preview_site_deid(session: AsyncSession, site_name: str, part10: bytes) -> DeidPreview:
    """What the site's current profile would change in `part10`."""
    if len(part10) > MAX_PREVIEW_BYTES:
        raise PreviewTooLargeError(
            f"the instance is {len(part10)} bytes; a preview takes at most {MAX_PREVIEW_BYTES}"
        )
    site = await sites.site_by_name(session, site_name)
    current = await config_revisions.current_config(session, site)
    deid = current.config.deid
    profile: Literal["none", "basic", "document"] = (
        "document" if isinstance(deid.profile, dict) else deid.profile
    )
    deidentifier = Deidentifier.from_config(deid, site.deid_salt)
    changes: list[Any] = []
    if deidentifier is not None:
        try:
            changes = await asyncio.to_thread(deidentifier.preview, part10)
        except DeidError as exc:
            raise UndeidentifiableInstanceError(
                f"the site's de-identification profile cannot be applied: {exc.reason}"
            ) from None
    return DeidPreview(
        site=site.name,
        revision=current.revision,
        profile=profile,
        options=list(deid.options),
        changes=[
            AttributeChangePublic.model_validate(change, from_attributes=True) for change in changes
        ],
    )
