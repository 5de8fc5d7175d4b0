"""De-identification preview of a site's profile (support and the site's admin)."""

from fastapi import APIRouter, Request

from control_plane.deid_preview import DeidPreview, preview_site_deid
from control_plane.deps import ReadSessionDep, SiteChangerDep

router = APIRouter(tags=["fleet"])

_DICOM_BODY = {
    "requestBody": {
        "required": True,
        "description": "One DICOM Part-10 instance.",
        "content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post(
    "/sites/{site}/deid/preview",
    openapi_extra=_DICOM_BODY,
    responses={
        413: {"description": "The instance is larger than a preview takes."},
        422: {"description": "The site's profile cannot be applied to this instance."},
    },
)
async def preview_deid(
    site: str, request: Request, principal: SiteChangerDep, session: ReadSessionDep
) -> DeidPreview:
    """Apply the site's current de-identification profile (with the site's salt) to the
    instance in the body and list, attribute by attribute, what it changes. Nothing is stored."""
    return await preview_site_deid(session, site, await request.body())
