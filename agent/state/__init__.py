"""The agent's durable bookkeeping of spooled instances and their series (SQLite, WAL).

One database file under the data directory, in five modules: `schema` (the migrations and
opening a file as a state database), `database` (the connection, one transaction at a time,
and handing a spool file back to the spool, which deletes it, only after the commit that makes
it unreferenced), `store` (`AgentState`: instances and series through their states), `rows`
(the values it hands out) and `group_commit` (the rows of instances received at once on several
associations, recorded in one transaction). The pull ledger's tables live in this database too;
their queries are the pull ledger's own repository, `agent.pull.ledger`, through
`AgentState.transaction`.

Must not import pynetdicom, HTTP libraries or control_plane.
"""

from agent.state.database import FileRelease
from agent.state.errors import InvalidTransitionError, StateError, StateFullError
from agent.state.group_commit import GroupCommit, GroupCommitClosedError
from agent.state.rows import (
    AddOutcome,
    FailedSeries,
    InstanceRow,
    InstanceState,
    SeriesRow,
    SpooledInstance,
    SpoolStats,
)
from agent.state.schema import SCHEMA_VERSION
from agent.state.store import AgentState

__all__ = [
    "SCHEMA_VERSION",
    "AddOutcome",
    "AgentState",
    "FailedSeries",
    "FileRelease",
    "GroupCommit",
    "GroupCommitClosedError",
    "InstanceRow",
    "InstanceState",
    "InvalidTransitionError",
    "SeriesRow",
    "SpoolStats",
    "SpooledInstance",
    "StateError",
    "StateFullError",
]
