"""The quick-reference card of a site: one printable page for scanner operators, generated
from the site's current config and the hierarchy store's real groups and projects.

It says which console field to type into (the DICOM attribute `routing.fields` names, by its
dictionary name), the routing string with real examples, the opt-in or opt-out strings and
their field, the upload window, and what happens to a typo (the fallback group and project).
Rendered with Jinja2, autoescaped: labels are other people's text. Must not import FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydicom.datadict import dictionary_description, tag_for_keyword

from common.config import SiteConfig

TEMPLATES = Path(__file__).parent / "templates"
MAX_GROUPS = 3
MAX_PROJECTS = 2

_ENVIRONMENT = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class Field:
    """A DICOM attribute as an operator finds it on a console."""

    keyword: str
    name: str


@dataclass(frozen=True)
class Example:
    """A routing string and where it files the data."""

    text: str
    meaning: str


def field_of(keyword: str) -> Field:
    """The attribute `keyword` with its dictionary name ("Patient Comments")."""
    tag = tag_for_keyword(keyword)
    return Field(keyword, keyword if tag is None else str(dictionary_description(tag)))


def examples_of(groups: list[tuple[str, str, list[str]]]) -> list[Example]:
    """Routing strings for up to `MAX_GROUPS` real groups (id, label, project labels)."""
    examples: list[Example] = []
    for group_id, label, projects in groups[:MAX_GROUPS]:
        for project in projects[:MAX_PROJECTS]:
            examples.append(
                Example(f"fw://{group_id}/{project}", f"group {label}, project {project}")
            )
    if examples:
        first = examples[0].text
        examples.append(
            Example(
                f"{first}/SUBJECT01/VISIT1",
                "the same project, subject SUBJECT01, session VISIT1 (else taken from the"
                " patient ID and the study description)",
            )
        )
    return examples


def render_card(
    site: str,
    timezone: str,
    revision: int,
    config: SiteConfig,
    groups: list[tuple[str, str, list[str]]],
) -> str:
    """The card's HTML page."""
    policy = config.upload_policy
    window = config.timing.working_hours
    return _ENVIRONMENT.get_template("card.html.j2").render(
        site=site,
        timezone=timezone,
        revision=revision,
        routing_fields=[field_of(keyword) for keyword in config.routing.fields],
        examples=examples_of(groups),
        policy_mode=policy.mode,
        policy_strings=list(policy.strings),
        policy_field=field_of(policy.field),
        window=None if window is None else f"{window.start:%H:%M} to {window.end:%H:%M}",
        unknown_group=config.routing.unknown_group,
        unsorted_project=config.routing.unsorted_project,
    )
