"""What a running control-plane app holds: settings, database engine, sessions, blob store,
the hub of connected agents and the clock.

Built by the lifespan in `control_plane.main` and reached by requests through
`control_plane.deps`; nothing here exists before the app starts. Must not import FastAPI.
"""

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from control_plane.alerts import Alerter
from control_plane.clock import Clock
from control_plane.fleet.rollout_driver import RolloutDriver
from control_plane.hierarchy.blobs import BlobStore
from control_plane.hub import Hub
from control_plane.replica_bus import ReplicaBus
from control_plane.settings import ControlPlaneSettings


@dataclass(frozen=True)
class Resources:
    """The long-lived objects of one running app; the lifespan owns and closes them."""

    settings: ControlPlaneSettings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    read_sessionmaker: async_sessionmaker[AsyncSession]
    """Sessions for requests that only read (on SQLite they do not wait for writers)."""
    blobs: BlobStore
    admin_token_digest: str
    hub: Hub
    clock: Clock
    alerter: Alerter | None = field(default=None)
    """Webhook alerts on site status changes (None when built without one, in tests)."""
    rollouts: RolloutDriver | None = field(default=None)
    """The driver of this process's rollouts (None when built without one, in tests)."""
    replica_bus: ReplicaBus | None = field(default=None)
    """What other replicas changed (a no-op on SQLite; None when built without one)."""
