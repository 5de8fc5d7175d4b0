"""Bearer tokens, the roles they carry and the principals they stand for.

Tokens are random (`secrets.token_urlsafe`), stored only as sha256 hex, looked up by that
digest and compared in constant time. Must not import FastAPI: `control_plane.deps` turns these
into request dependencies and `control_plane.access` decides what each role may do.
"""

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum

TOKEN_BYTES = 32
ADMIN_PRINCIPAL_NAME = "admin"


class Role(StrEnum):
    """What a bearer token may do (docs/security.md has the table)."""

    support = "support"
    """The whole fleet: every site, the hierarchy store, tokens."""
    site_admin = "site-admin"
    """One site: its config and agents; reads the hierarchy of its own site."""
    read_only = "read-only"
    """Reads the whole fleet, or one site when the token names one; changes nothing."""
    agent = "agent"
    """One agent of one site: its config, its link, uploads."""


HUMAN_ROLES = (Role.support, Role.site_admin, Role.read_only)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the bootstrap admin, an API token's holder, or one agent of one site."""

    role: Role
    name: str
    token_id: uuid.UUID | None = None
    """The API token used (None for the admin token and for agents)."""
    agent_id: uuid.UUID | None = None
    site_id: uuid.UUID | None = None
    """The one site this principal is bound to (None: the whole fleet)."""
    site_name: str | None = None

    @property
    def is_human(self) -> bool:
        """A person's token (support, site-admin, read-only), as opposed to an agent's."""
        return self.role is not Role.agent

    @property
    def actor_id(self) -> str:
        """How the audit log names this principal: token id, agent id, or `admin`."""
        if self.token_id is not None:
            return str(self.token_id)
        if self.agent_id is not None:
            return str(self.agent_id)
        return ADMIN_PRINCIPAL_NAME


ADMIN = Principal(role=Role.support, name=ADMIN_PRINCIPAL_NAME)
"""The bootstrap principal of `--admin-token`: a support engineer for the whole fleet."""


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
