"""The replica bus: what other control-plane replicas changed, heard at once (PostgreSQL).

Every replica keeps one dedicated psycopg connection that LISTENs on the fleet channel
(`control_plane.fleet.notices.CHANNEL`). The notices sent with each change (a site's new
config revision, an agent's token rotated or revoked) reach every replica as soon as the
change commits, and `on_notice` (the hub) offers the revision to its links of that site or
closes the agent's link. The sender hears its own notices too; acting on them again is a
no-op (a link never takes a revision it has, a link whose token is current stays open).

Notices sent while the connection was down are lost, so after every (re)connect `on_resync`
(the hub's full reconcile) catches up. The connection is probed when it has been quiet for a
while and reconnected with a capped, jittered backoff after a drop. The hub's periodic
reconcile stays the safety net either way.

On SQLite one process owns the database and there is nobody to tell: `run` returns at once.
Must not import FastAPI.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import psycopg
import structlog
from psycopg import sql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from control_plane.database_url import is_sqlite, sync_database_url
from control_plane.fleet.notices import CHANNEL, FleetNotice, parse_notice

logger = structlog.get_logger(__name__)

APPLICATION_NAME = "dicom-connector-replica-bus"
"""The bus connection's `application_name`, as `pg_stat_activity` shows it."""
# A quiet connection is probed this often, so a drop without a TCP reset (a failed-over
# server, a dead NAT entry) is found in about this long; TCP keepalives back it up.
PROBE_INTERVAL_S = 15.0
CONNECT_TIMEOUT_S = 10
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0


class ReplicaBus:
    """One LISTEN connection and the callbacks it feeds; `run` is owned by the app."""

    def __init__(
        self,
        database_url: str,
        on_notice: Callable[[FleetNotice], Awaitable[None]],
        on_resync: Callable[[], Awaitable[None]],
        *,
        probe_interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        self._database_url = database_url
        self._on_notice = on_notice
        self._on_resync = on_resync
        self._probe_interval_s = probe_interval_s
        self.listening = asyncio.Event()
        """Set while the channel is listened to (and caught up after a reconnect)."""
        self.connections = 0
        """How many times the bus connected (1 + reconnects), for tests and support."""

    @property
    def enabled(self) -> bool:
        """Whether there are other replicas to hear from (PostgreSQL only)."""
        return not is_sqlite(self._database_url)

    async def run(self) -> None:
        """Listen until cancelled; reconnect after a drop and resync. A no-op on SQLite."""
        if not self.enabled:
            return
        failures = 0
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(failures, 16))
                wait = random.uniform(0, ceiling)
                failures += 1
                logger.warning(
                    "replica bus connection lost; changes made through other replicas reach"
                    " this one's agents at the next reconcile until it is back",
                    error=type(exc).__name__,
                    attempt=failures,
                    duration_ms=round(wait * 1000),
                )
                await asyncio.sleep(wait)
            else:
                failures = 0

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            _conninfo(self._database_url), autocommit=True
        ) as connection:
            await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            self.connections += 1
            # Whatever was sent before LISTEN took effect was missed: catch up once now.
            await self._resync()
            self.listening.set()
            logger.info("replica bus listening", count=self.connections)
            while True:
                async for notify in connection.notifies(timeout=self._probe_interval_s):
                    notice = parse_notice(notify.payload)
                    if notice is not None:
                        await self._deliver(notice)
                await connection.execute("SELECT 1")

    async def _deliver(self, notice: FleetNotice) -> None:
        try:
            await self._on_notice(notice)
        except (SQLAlchemyError, OSError) as exc:
            # The change is in the database: the periodic reconcile delivers it.
            logger.error(
                "could not act on a replica notice; the reconcile will",
                reason=notice.kind.value,
                error=type(exc).__name__,
            )

    async def _resync(self) -> None:
        try:
            await self._on_resync()
        except (SQLAlchemyError, OSError) as exc:
            logger.error(
                "could not catch up after the replica bus connected; the reconcile will",
                error=type(exc).__name__,
            )


def _conninfo(database_url: str) -> str:
    url = make_url(sync_database_url(database_url)).set(drivername="postgresql")
    url = url.update_query_dict(
        {
            "application_name": APPLICATION_NAME,
            "connect_timeout": str(CONNECT_TIMEOUT_S),
            "keepalives": "1",
            "keepalives_idle": "10",
            "keepalives_interval": "5",
            "keepalives_count": "3",
        }
    )
    return url.render_as_string(hide_password=False)
