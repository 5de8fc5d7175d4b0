"""Maps a DICOM series (its header values) and its routing decision onto the research hierarchy.

group / project come from the routing string; subject, session and acquisition come from the
routing string where it names them, else from the header. Pure logic over plain strings: the
agent reads the header with pydicom and passes a `SeriesHeader`. Imports stdlib and `common`
only: never web, database or DICOM libraries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from common.config import HierarchyConfig
from common.routing import RoutingDecision, RoutingReason, label_problem

__all__ = [
    "HEADER_LABEL_MAX_LENGTH",
    "UNKNOWN_LABEL",
    "HierarchyTarget",
    "SeriesHeader",
    "map_to_hierarchy",
]

HEADER_LABEL_MAX_LENGTH = 128
UNKNOWN_LABEL = "unknown"


@dataclass(frozen=True)
class SeriesHeader:
    """The header values of one series that the mapping needs, as plain strings.

    ``fields`` holds the raw values of the attributes the site config names for routing and
    upload policy (``routing.field``, ``upload_policy.field``), keyed by DICOM keyword.
    """

    patient_id: str | None = None
    study_instance_uid: str | None = None
    study_description: str | None = None
    series_instance_uid: str | None = None
    series_description: str | None = None
    series_number: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HierarchyTarget:
    """Where a series goes.

    ``group`` and ``project`` are None when there was no valid routing string: the hierarchy
    store then applies the site's fallback (``routing.unknown_group`` / ``unsorted_project``)
    and records the final reason. ``acquisition_key`` is what groups series into one
    acquisition; ``acquisition`` is its human-readable label.
    """

    group: str | None
    project: str | None
    subject: str
    session: str
    acquisition: str
    acquisition_key: str
    routing_reason: RoutingReason
    routing_string: str | None


def map_to_hierarchy(
    header: SeriesHeader, routing: RoutingDecision, hierarchy: HierarchyConfig
) -> HierarchyTarget:
    """Resolve the hierarchy target of a series.

    Each label takes the first usable source, in this order:

    - subject: routing SUBJECT, PatientID, else ``"unknown"``;
    - session: routing SESSION, StudyDescription, StudyInstanceUID, else ``"unknown"``;
    - acquisition: SeriesDescription, ``"Series <SeriesNumber>"``, SeriesInstanceUID, else
      ``"unknown"``;
    - acquisition_key: SeriesInstanceUID, or SeriesDescription first when
      ``acquisition_grouping`` is ``series_description``, else ``"unknown"``.

    Header values are stripped of surrounding spaces (DICOM padding, not significant). A
    header value is unusable when it is blank or unsafe as a label: ``.`` or ``..``, holding
    ``/`` or ``\\``, holding control or invisible formatting characters, or longer than 128
    characters. An unusable value is never altered to make it fit: the next source is used
    instead, so a label is always either exactly what the scanner wrote or a documented
    fallback. Routing-string labels were already validated by `common.routing.parse_routing`.
    """
    route = routing.route if routing.reason is RoutingReason.routed else None
    series_number = _usable(header.series_number)
    numbered_series = f"Series {series_number}" if series_number else None
    description_key = (
        header.series_description
        if hierarchy.acquisition_grouping == "series_description"
        else None
    )
    return HierarchyTarget(
        group=route.group if route else None,
        project=route.project if route else None,
        subject=_first_usable(route.subject if route else None, header.patient_id),
        session=_first_usable(
            route.session if route else None,
            header.study_description,
            header.study_instance_uid,
        ),
        acquisition=_first_usable(
            header.series_description, numbered_series, header.series_instance_uid
        ),
        acquisition_key=_first_usable(description_key, header.series_instance_uid),
        routing_reason=routing.reason,
        routing_string=routing.raw,
    )


def _first_usable(*candidates: str | None) -> str:
    for candidate in candidates:
        label = _usable(candidate)
        if label is not None:
            return label
    return UNKNOWN_LABEL


def _usable(value: str | None) -> str | None:
    if value is None:
        return None
    label = value.strip(" ")
    if label_problem(label, max_length=HEADER_LABEL_MAX_LENGTH) is not None:
        return None
    return label
