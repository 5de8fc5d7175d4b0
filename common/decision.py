"""The decision for one series: upload policy, routing string, metadata patterns, labels.

Pure logic over header values, shared by the agent's reaper (which reads the header from the
spooled file) and the control plane's routing check (which takes values an admin typed), so a
check answers exactly what the agent would do. Imports stdlib and `common` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.config import SiteConfig
from common.hierarchy import HierarchyTarget, SeriesHeader, map_to_hierarchy
from common.patterns import apply_patterns
from common.policy import PolicyDecision, decide_upload
from common.routing import RoutingDecision, RoutingReason, parse_routing

__all__ = ["SITE_ROUTING", "SeriesPlan", "find_routing", "plan_series", "routing_fields_for"]

SITE_ROUTING = "routing"


@dataclass(frozen=True)
class SeriesPlan:
    """What happens to a series: the policy's verdict and, when it uploads, its target.

    `routing_from` names the config block whose fields were searched for the routing string:
    ``routing`` (the site's) or ``dicom.peers[N].routing`` (the sending scanner's).
    """

    policy: PolicyDecision
    target: HierarchyTarget | None
    routing_from: str = SITE_ROUTING


def plan_series(
    header: SeriesHeader, config: SiteConfig, labels: SeriesHeader | None = None
) -> SeriesPlan:
    """Decide a series from its header under `config`.

    Upload policy and routing string come from `header`: the first of the routing fields
    that holds a routing string decides, the fields being those of the `dicom.peers` entry
    whose AE title is the header's calling AE title when that entry has a `routing` block,
    else the site's `routing.fields` (`routing_fields_for`). The metadata patterns and the
    hierarchy labels read `labels` (the de-identified header) when given, else `header`, so
    under a de-identifying profile they only ever see what may leave the site.
    """
    policy = decide_upload(config.upload_policy, header.value(config.upload_policy.field))
    if not policy.upload:
        return SeriesPlan(policy, None)
    fields, routing_from = routing_fields_for(config, header.calling_ae_title)
    routing = find_routing(header, fields)
    mapped = labels or header
    patterns = [(pattern.field, pattern.regex) for pattern in config.metadata.patterns]
    found = apply_patterns(patterns, mapped.values())
    target = map_to_hierarchy(mapped, routing, config.hierarchy, found)
    return SeriesPlan(policy, target, routing_from)


def routing_fields_for(config: SiteConfig, calling_ae_title: str | None) -> tuple[list[str], str]:
    """The routing fields for a series sent by `calling_ae_title`, and the config block they
    come from: the scanner's own (`dicom.peers[N].routing`) when it has one, else the site's."""
    override = config.dicom.routing_for(calling_ae_title)
    if override is None:
        return list(config.routing.fields), SITE_ROUTING
    routing, index = override
    return list(routing.fields), f"dicom.peers[{index}].routing"


def find_routing(header: SeriesHeader, fields: Sequence[str]) -> RoutingDecision:
    """The routing decision of the first field in `fields` that holds a routing string.

    A field whose routing string is invalid decides too (as `invalid_label`): what the
    operator typed first is what support sees, never silently replaced by a later field.
    """
    for keyword in fields:
        routing = parse_routing(header.value(keyword))
        if routing.reason is not RoutingReason.no_routing_string:
            return routing
    return parse_routing(None)
