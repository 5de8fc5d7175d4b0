"""Bearer tokens and the principals they stand for.

Tokens are random (`secrets.token_urlsafe`), stored only as sha256 hex and compared in constant
time. Must not import FastAPI: `control_plane.deps` turns these into request dependencies.
"""

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum

TOKEN_BYTES = 32
ADMIN_PRINCIPAL_NAME = "admin"


class PrincipalKind(StrEnum):
    """What a bearer token was issued to."""

    admin = "admin"
    agent = "agent"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the administrator, or one agent of one site."""

    kind: PrincipalKind
    name: str
    agent_id: uuid.UUID | None = None
    site_id: uuid.UUID | None = None


ADMIN = Principal(kind=PrincipalKind.admin, name=ADMIN_PRINCIPAL_NAME)


def new_token() -> str:
    """A fresh bearer token (shown once to whoever asked for it, never stored as is)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """The sha256 hex digest under which a token is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def digests_match(presented_digest: str, stored_digest: str) -> bool:
    """Compare two token digests in constant time."""
    return hmac.compare_digest(presented_digest, stored_digest)


def agent_principal_name(site_name: str, agent_name: str) -> str:
    """How an agent is named where its actions are recorded (e.g. config revisions)."""
    return f"agent:{site_name}/{agent_name}"
