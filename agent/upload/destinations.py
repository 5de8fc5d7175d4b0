"""The destinations of one site config, built in one place, chosen per series.

`build_destinations` turns the config's `destination` and `destination_by_group` into
`Destination` objects (one per distinct destination config). `Destinations.lease(target,
routing)` picks the one for a series and keeps it open while the series' chunks are sent:
`destination_by_group` is looked up with the group of the series' hierarchy target, or with
`routing.unknown_group` when the series had no group (no routing string, an unparsable one,
an invalid label), and the site's `destination` is used for every other group. The group is
the one the routing string names: whether a store knows that group is the store's business
(the built-in store files an unknown group under `unknown_group`; Flywheel uses its own
`unknown` group).

When a new config revision changes the destinations, the runtime builds a new set and
`retire`s the old one: it is closed once its last lease ends, so a chunk already being sent
finishes on the connection it started on. The built-in store destination is shared by every
set and owned by the runtime, which closes it at shutdown.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from agent.upload.base import Destination
from agent.upload.dicomweb import DicomwebDestination
from agent.upload.flywheel import FlywheelDestination
from common.config import (
    BuiltinDestination,
    DestinationConfig,
    RoutingConfig,
    SiteConfig,
)
from common.config import DicomwebDestination as DicomwebConfig
from common.config import FlywheelDestination as FlywheelConfig
from common.hierarchy import HierarchyTarget

DestinationsKey = tuple[DestinationConfig, tuple[tuple[str, DestinationConfig], ...]]


def destinations_key(config: SiteConfig) -> DestinationsKey:
    """What of `config` decides the destinations (equal keys: nothing to rebuild)."""
    return config.destination, tuple(sorted(config.destination_by_group.items()))


class Destinations:
    """A site config's destinations: the default one and the per-group overrides."""

    def __init__(
        self,
        key: DestinationsKey,
        default: Destination,
        by_group: Mapping[str, Destination],
        owned: list[Destination],
    ) -> None:
        self.key = key
        self._default = default
        self._by_group = dict(by_group)
        self._owned = owned
        self._leases = 0
        self._retired = False
        self._closed = False

    @classmethod
    def single(cls, destination: Destination) -> Destinations:
        """Every series to `destination` (not closed by this set)."""
        return cls((BuiltinDestination(), ()), destination, {}, [])

    @property
    def leases(self) -> int:
        """Batches using this set right now."""
        return self._leases

    def for_target(self, target: HierarchyTarget, routing: RoutingConfig) -> Destination:
        """The destination of a series with this target."""
        group = target.group if target.group is not None else routing.unknown_group
        return self._by_group.get(group, self._default)

    @asynccontextmanager
    async def lease(
        self, target: HierarchyTarget, routing: RoutingConfig
    ) -> AsyncIterator[Destination]:
        """The destination of a series, kept open until the block ends."""
        self._leases += 1
        try:
            yield self.for_target(target, routing)
        finally:
            self._leases -= 1
            if self._retired and self._leases == 0:
                await self._close()

    async def retire(self) -> None:
        """No new leases are expected: close now, or when the last lease ends."""
        self._retired = True
        if self._leases == 0:
            await self._close()

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for destination in self._owned:
            await destination.aclose()


def build_destinations(config: SiteConfig, builtin: Destination, *, timeout: float) -> Destinations:
    """The destinations `config` names; `builtin` serves `kind: builtin` (and stays open)."""
    built: dict[DestinationConfig, Destination] = {}
    owned: list[Destination] = []

    def destination_for(wanted: DestinationConfig) -> Destination:
        if isinstance(wanted, BuiltinDestination):
            return builtin
        if wanted not in built:
            built[wanted] = _external(wanted, timeout)
            owned.append(built[wanted])
        return built[wanted]

    default = destination_for(config.destination)
    by_group = {
        group: destination_for(wanted) for group, wanted in config.destination_by_group.items()
    }
    return Destinations(destinations_key(config), default, by_group, owned)


def _external(wanted: DicomwebConfig | FlywheelConfig, timeout: float) -> Destination:
    if isinstance(wanted, DicomwebConfig):
        token_file = Path(wanted.token_file) if wanted.token_file is not None else None
        return DicomwebDestination(wanted.url, token_file, timeout=timeout)
    return FlywheelDestination(wanted.url, Path(wanted.api_key_file), timeout=timeout)
