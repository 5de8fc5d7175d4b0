"""Where a series would land today, and why: the routing check behind `POST /routing/check`.

The agent's own decision (`common.decision.plan_series`) under the site's current config, then
the store's placement rules read-only (an unknown group files under the site's fallback
group, an unknown project under its group's fallback project), with the nearest existing group
and project names when a name looks like a typo. Nothing is created. Must not import FastAPI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common.config import SiteConfig
from common.decision import plan_series, routing_fields_for
from common.hierarchy import SeriesHeader
from common.routing import RoutingReason
from control_plane.models import Group, Project
from control_plane.schemas import RoutingCheckAnswer, RoutingSuggestion

MAX_SUGGESTIONS = 3


async def check_routing(
    session: AsyncSession,
    config: SiteConfig,
    routing_string: str | None,
    headers: Mapping[str, str],
    calling_ae_title: str | None = None,
) -> RoutingCheckAnswer:
    """Where a series with `headers` (and `routing_string`, if given) sent by
    `calling_ae_title` would land now."""
    values = dict(headers)
    if routing_string is not None:
        fields, _ = routing_fields_for(config, calling_ae_title)
        values[fields[0]] = routing_string
    plan = plan_series(SeriesHeader(fields=values, calling_ae_title=calling_ae_title), config)
    if plan.target is None:
        return RoutingCheckAnswer(
            upload=False,
            policy_reason=str(plan.policy.reason),
            group=None,
            project=None,
            subject=None,
            session=None,
            acquisition=None,
            reason=None,
            routing_string=None,
            suggestions=[],
            notes=[],
        )
    target = plan.target
    projects = await _projects(session)
    fallback = (config.routing.unknown_group, config.routing.unsorted_project)
    group, project = target.group, target.project
    reason = target.routing_reason
    suggestions: list[RoutingSuggestion] = []
    if group is None or project is None:
        group, project = fallback
    elif group not in projects:
        suggestions = _suggest_groups(target.group or "", target.project or "", projects)
        group, project = fallback
        reason = RoutingReason.unknown_group
    elif project not in projects[group]:
        suggestions = [
            RoutingSuggestion(group=group, project=label)
            for label in _nearest(project, projects[group])
        ]
        project = config.routing.unsorted_project
        reason = RoutingReason.unknown_project
    return RoutingCheckAnswer(
        upload=True,
        policy_reason=str(plan.policy.reason),
        group=group,
        project=project,
        subject=target.subject,
        session=target.session,
        acquisition=target.acquisition,
        reason=reason,
        routing_string=target.routing_string,
        routing_from=plan.routing_from,
        metadata=dict(target.metadata),
        suggestions=suggestions,
        notes=list(target.label_notes),
    )


async def _projects(session: AsyncSession) -> dict[str, set[str]]:
    groups: dict[str, set[str]] = {
        group_id: set() for group_id in await session.scalars(select(Group.id))
    }
    for group_id, label in await session.execute(select(Project.group_id, Project.label)):
        groups.setdefault(group_id, set()).add(label)
    return groups


def _suggest_groups(
    group: str, project: str, projects: Mapping[str, set[str]]
) -> list[RoutingSuggestion]:
    suggestions = []
    for candidate in _nearest(group, projects):
        labels = projects[candidate]
        nearest = [project] if project in labels else _nearest(project, labels)[:1]
        suggestions.append(
            RoutingSuggestion(group=candidate, project=nearest[0] if nearest else None)
        )
    return suggestions


def _nearest(name: str, candidates: Iterable[str]) -> list[str]:
    """Existing names within a few edits of `name` (case-insensitive), nearest first."""
    wanted = name.casefold()
    limit = max(2, len(wanted) // 3)
    scored = sorted(
        (distance, candidate)
        for candidate in candidates
        if (distance := edit_distance(wanted, candidate.casefold())) <= limit
    )
    return [candidate for _, candidate in scored[:MAX_SUGGESTIONS]]


def edit_distance(first: str, second: str) -> int:
    """The Levenshtein distance: insertions, deletions and substitutions to turn one into the
    other."""
    previous = list(range(len(second) + 1))
    for i, left in enumerate(first, start=1):
        current = [i]
        for j, right in enumerate(second, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (left != right))
            )
        previous = current
    return previous[-1]
