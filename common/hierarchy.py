"""Maps a DICOM series (its header values) and its routing decision onto the research hierarchy.

group / project come from the routing string; subject, session and acquisition come from the
routing string where it names them, else from the header. Pure logic over plain strings: the
agent reads the header with pydicom and passes a `SeriesHeader`. Imports stdlib and `common`
only: never web, database or DICOM libraries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from common.config import HierarchyConfig
from common.patterns import PatternOutcome, metadata_value_problem, render_template
from common.routing import RoutingDecision, RoutingReason, group_id_problem, label_problem

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

    The named attributes are the ones every mapping may use; ``fields`` holds the raw values
    of every other attribute the site config names (routing fields, upload policy field,
    hierarchy fields, label template and pattern attributes), keyed by DICOM keyword.
    ``calling_ae_title`` is not a header value but who sent it (see below).
    """

    patient_id: str | None = None
    study_instance_uid: str | None = None
    study_description: str | None = None
    series_instance_uid: str | None = None
    series_description: str | None = None
    series_number: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    # The calling AE title of the association that brought the instance (recorded as
    # SourceApplicationEntityTitle in the spooled file's meta group): chooses a peer's routing.
    calling_ae_title: str | None = None

    def value(self, keyword: str) -> str | None:
        """The value of the attribute `keyword`, None when absent or empty."""
        attribute = _NAMED_ATTRIBUTES.get(keyword)
        named = getattr(self, attribute) if attribute is not None else None
        return named if named is not None else self.fields.get(keyword) or None

    def values(self) -> dict[str, str]:
        """Every known value by keyword."""
        merged = dict(self.fields)
        for keyword, attribute in _NAMED_ATTRIBUTES.items():
            named = getattr(self, attribute)
            if named is not None:
                merged[keyword] = named
        return merged


_NAMED_ATTRIBUTES = {
    "PatientID": "patient_id",
    "StudyInstanceUID": "study_instance_uid",
    "StudyDescription": "study_description",
    "SeriesInstanceUID": "series_instance_uid",
    "SeriesDescription": "series_description",
    "SeriesNumber": "series_number",
}


@dataclass(frozen=True)
class HierarchyTarget:
    """Where a series goes.

    ``group`` and ``project`` are None when there was no valid routing string: the hierarchy
    store then applies the site's fallback (``routing.unknown_group`` / ``unsorted_project``)
    and records the final reason. ``acquisition_key`` is what groups series into one
    acquisition; ``acquisition`` is its human-readable label. ``metadata`` holds what the
    metadata patterns extracted beyond labels (kept on the session); ``label_notes`` says,
    without quoting any value, which configured source of a label was not usable and why.
    """

    group: str | None
    project: str | None
    subject: str
    session: str
    acquisition: str
    acquisition_key: str
    routing_reason: RoutingReason
    routing_string: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    label_notes: Sequence[str] = ()


def map_to_hierarchy(
    header: SeriesHeader,
    routing: RoutingDecision,
    hierarchy: HierarchyConfig,
    patterns: PatternOutcome | None = None,
) -> HierarchyTarget:
    """Resolve the hierarchy target of a series.

    Precedence for every label: the routing string, then the metadata patterns
    (`common.patterns.apply_patterns`, already run by the caller), then the header:

    - group, project: routing string; without one, a pattern that yields both; else None
      (the store files the series under the site's fallback names);
    - subject: routing SUBJECT, pattern ``subject``, ``hierarchy.subject_field``, else
      ``"unknown"``;
    - session: routing SESSION, pattern ``session``, ``hierarchy.session_field``,
      StudyInstanceUID, else ``"unknown"``;
    - acquisition: pattern ``acquisition``, the ``hierarchy.acquisition_label`` template,
      ``"Series <SeriesNumber>"``, SeriesInstanceUID, else ``"unknown"``;
    - acquisition_key: by ``acquisition_grouping``: the SeriesDescription, or
      ``"<SeriesNumber>-<AcquisitionNumber>"``, each falling back to the SeriesInstanceUID.

    Header values are stripped of surrounding spaces (DICOM padding, not significant). A
    value is unusable when it is blank or unsafe as a label: ``.`` or ``..``, holding ``/``
    or ``\\``, holding control or invisible formatting characters, or longer than 128
    characters. An unusable value is never altered to make it fit: the next source is used
    instead and ``label_notes`` says which source was passed over and why, so a label is
    always either exactly what was written or a documented fallback. Routing-string labels
    were already validated by `common.routing.parse_routing`. Metadata (pattern groups other
    than the labels) is kept stripped of surrounding spaces; a value the store cannot keep
    (`common.patterns.metadata_value_problem`) is left out with a note.
    """
    found = patterns or PatternOutcome()
    notes: list[str] = [*found.problems]
    route = routing.route if routing.reason is RoutingReason.routed else None
    group, project = (route.group, route.project) if route else (None, None)
    reason = routing.reason
    if route is None and reason is RoutingReason.no_routing_string:
        group, project = _pattern_route(found, notes)
        if group is not None:
            reason = RoutingReason.routed
    chooser = _Chooser(notes)
    series_number = _usable(header.series_number)
    template = render_template(hierarchy.acquisition_label, header.values())
    subject = chooser.first(
        ("routing string subject", route.subject if route else None),
        ("metadata pattern subject", found.labels.get("subject")),
        (
            f"hierarchy.subject_field ({hierarchy.subject_field})",
            header.value(hierarchy.subject_field),
        ),
    )
    session = chooser.first(
        ("routing string session", route.session if route else None),
        ("metadata pattern session", found.labels.get("session")),
        (
            f"hierarchy.session_field ({hierarchy.session_field})",
            header.value(hierarchy.session_field),
        ),
        ("StudyInstanceUID", header.study_instance_uid),
    )
    acquisition = chooser.first(
        ("metadata pattern acquisition", found.labels.get("acquisition")),
        ("hierarchy.acquisition_label", template),
        ("SeriesNumber", f"Series {series_number}" if series_number else None),
        ("SeriesInstanceUID", header.series_instance_uid),
    )
    return HierarchyTarget(
        group=group,
        project=project,
        subject=subject,
        session=session,
        acquisition=acquisition,
        acquisition_key=_acquisition_key(header, hierarchy, chooser),
        routing_reason=reason,
        routing_string=routing.raw,
        metadata=_storable_metadata(found.metadata, notes),
        label_notes=tuple(notes),
    )


def _storable_metadata(metadata: Mapping[str, str], notes: list[str]) -> dict[str, str]:
    """The pattern metadata the store can keep as it is; the rest is noted, never cut."""
    kept: dict[str, str] = {}
    for name, raw in metadata.items():
        value = raw.strip(" ")
        problem = metadata_value_problem(value) if value else "is blank"
        if problem is None:
            kept[name] = value
        else:
            notes.append(f"metadata pattern {name} {problem}; it was not kept")
    return kept


def _pattern_route(found: PatternOutcome, notes: list[str]) -> tuple[str | None, str | None]:
    group, project = found.labels.get("group"), found.labels.get("project")
    if group is None or project is None:
        return None, None
    group = group.strip(" ").lower()
    project = project.strip(" ")
    if group_id_problem(group) is not None or label_problem(project) is not None:
        notes.append("metadata pattern group/project is not a valid group id and project label")
        return None, None
    return group, project


def _acquisition_key(header: SeriesHeader, hierarchy: HierarchyConfig, chooser: _Chooser) -> str:
    grouping = hierarchy.acquisition_grouping
    if grouping == "series_description":
        return chooser.first(
            ("SeriesDescription", header.series_description),
            ("SeriesInstanceUID", header.series_instance_uid),
        )
    if grouping == "series_number_acquisition_number":
        number = _usable(header.series_number)
        acquisition_number = _usable(header.value("AcquisitionNumber"))
        key = None
        if number is not None:
            key = f"{number}-{acquisition_number}" if acquisition_number else number
        return chooser.first(
            ("SeriesNumber", key), ("SeriesInstanceUID", header.series_instance_uid)
        )
    return chooser.first(("SeriesInstanceUID", header.series_instance_uid))


class _Chooser:
    """Picks the first usable candidate and notes the unusable ones it passed over."""

    def __init__(self, notes: list[str]) -> None:
        self._notes = notes

    def first(self, *candidates: tuple[str, str | None]) -> str:
        for source, candidate in candidates:
            if candidate is None:
                continue
            label = candidate.strip(" ")
            problem = label_problem(label, max_length=HEADER_LABEL_MAX_LENGTH)
            if problem is None:
                return label
            if label:
                self._notes.append(f"{source} {problem}; the next source was used")
        return UNKNOWN_LABEL


def _usable(value: str | None) -> str | None:
    if value is None:
        return None
    label = value.strip(" ")
    if label_problem(label, max_length=HEADER_LABEL_MAX_LENGTH) is not None:
        return None
    return label
