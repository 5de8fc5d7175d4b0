"""What changed between two site-config documents, as dotted keys with old and new values.

Lists are compared as a whole (`dicom.peers` is one key), because their items have no stable
identity to diff by. Pure functions on JSON-shaped data; must not import the database layer.
"""

from collections.abc import Mapping
from typing import Any

from control_plane.schemas import ConfigChange

_MISSING = object()


def _flatten(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    leaves: dict[str, Any] = {}
    for key, value in document.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            leaves.update(_flatten(value, f"{dotted}."))
        else:
            leaves[dotted] = value
    return leaves


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[ConfigChange]:
    """The changed leaves between two JSON documents, sorted by key.

    A key present on one side only shows `None` on the other.
    """
    old_leaves, new_leaves = _flatten(old), _flatten(new)
    changes = []
    for key in sorted(old_leaves.keys() | new_leaves.keys()):
        before = old_leaves.get(key, _MISSING)
        after = new_leaves.get(key, _MISSING)
        if before != after:
            changes.append(
                ConfigChange(
                    key=key,
                    old=None if before is _MISSING else before,
                    new=None if after is _MISSING else after,
                )
            )
    return changes
