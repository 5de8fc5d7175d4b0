"""API tokens for people and automation (support only): issue, list, revoke."""

import uuid

from fastapi import APIRouter, status

from control_plane import api_tokens
from control_plane.auth_schemas import TokenCreate, TokenCreated, TokenPublic
from control_plane.deps import ReadSessionDep, ResourcesDep, SessionDep, SupportDep
from control_plane.schemas import ItemList

router = APIRouter(tags=["access"])


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
async def create_token(
    body: TokenCreate, principal: SupportDep, session: SessionDep, resources: ResourcesDep
) -> TokenCreated:
    """Issue a token (shown this once; the database keeps only its digest)."""
    return await api_tokens.create_token(session, body, principal, resources.clock())


@router.get("/tokens")
async def list_tokens(
    _: SupportDep, session: ReadSessionDep, resources: ResourcesDep
) -> ItemList[TokenPublic]:
    """Every token issued, newest first, with its state (never the token itself)."""
    return ItemList(items=await api_tokens.list_tokens(session, resources.clock()))


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_token(
    token_id: uuid.UUID, principal: SupportDep, session: SessionDep, resources: ResourcesDep
) -> None:
    """Revoke a token; it is refused from the next request on."""
    await api_tokens.revoke_token(session, token_id, principal, resources.clock())
