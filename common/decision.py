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

__all__ = ["SeriesPlan", "find_routing", "plan_series"]


@dataclass(frozen=True)
class SeriesPlan:
    """What happens to a series: the policy's verdict and, when it uploads, its target."""

    policy: PolicyDecision
    target: HierarchyTarget | None


def plan_series(
    header: SeriesHeader, config: SiteConfig, labels: SeriesHeader | None = None
) -> SeriesPlan:
    """Decide a series from its header under `config`.

    Upload policy and routing string come from `header`: the first of `routing.fields` that
    holds a routing string decides. The metadata patterns and the hierarchy labels read
    `labels` (the de-identified header) when given, else `header`, so under a de-identifying
    profile they only ever see what may leave the site.
    """
    policy = decide_upload(config.upload_policy, header.value(config.upload_policy.field))
    if not policy.upload:
        return SeriesPlan(policy, None)
    routing = find_routing(header, config.routing.fields)
    mapped = labels or header
    patterns = [(pattern.field, pattern.regex) for pattern in config.metadata.patterns]
    found = apply_patterns(patterns, mapped.values())
    return SeriesPlan(policy, map_to_hierarchy(mapped, routing, config.hierarchy, found))


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
