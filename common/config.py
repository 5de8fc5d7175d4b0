"""The site config: the one pydantic model (`SiteConfig`) of a site's YAML/JSON document.

Control plane and agent validate a config the same way, through this module. Every section
refuses unknown keys, so a typo'd key is an error rather than a silently ignored setting; every
error names the dotted key, the bad value and what is allowed (`ConfigError`).

DICOM keywords (``routing.field``, ``upload_policy.field``) are checked by shape only, because
this module must not import pydicom: the agent checks them against the DICOM dictionary when it
applies a config. Imports pydantic, PyYAML, stdlib and `common` only: never web, database or
DICOM libraries.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
import urllib.parse
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Annotated, Any, Literal, Self, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from common.deid.flywheel import profile_problems
from common.deid.table import BASIC_OPTIONS, BasicOption
from common.durations import Duration, WorkingHoursField, format_duration
from common.patterns import check_pattern, template_keywords, vr_problem
from common.routing import contains_control_characters, group_id_problem, label_problem

__all__ = [
    "ConfigError",
    "DeidConfig",
    "DicomConfig",
    "DicomPeer",
    "DicomTimeouts",
    "DicomTls",
    "HierarchyConfig",
    "MetadataConfig",
    "MetadataPattern",
    "PeerRouting",
    "PullConfig",
    "PullSource",
    "RoutingConfig",
    "SiteConfig",
    "TimingConfig",
    "UploadPolicyConfig",
    "dicom_keywords",
    "dictionary_problems",
    "load_site_config",
    "site_config_json_schema",
    "validate_site_config",
]

DICOM_KEYWORD_PATTERN = r"^[A-Za-z][A-Za-z0-9]{0,63}$"
_DICOM_KEYWORD = re.compile(DICOM_KEYWORD_PATTERN)
_AE_TITLE_CHARS = re.compile(r"[ -\[\]-~]+")  # printable ASCII except backslash
_HOST = re.compile(r"[A-Za-z0-9._:%\[\]-]{1,253}")


def _invalid(kind: str, message: str) -> PydanticCustomError:
    # Messages carry user input; passing them as context keeps braces from being templated.
    return PydanticCustomError(f"invalid_{kind}", "{reason}", {"reason": message})


def _check_ae_title(value: str) -> str:
    # Leading and trailing spaces are not significant in a DICOM AE title.
    title = value.strip(" ")
    if not title or len(title) > 16 or not _AE_TITLE_CHARS.fullmatch(title):
        raise _invalid(
            "ae_title",
            f"{value!r} is not a DICOM AE title; use 1-16 printable ASCII characters "
            "without backslash, not all spaces (e.g. CONNECTOR)",
        )
    return title


def _check_host(value: str) -> str:
    if not _HOST.fullmatch(value):
        raise _invalid(
            "host",
            f"{value!r} is not a host name or IP address (e.g. pacs.example.org, 10.0.0.5)",
        )
    return value


def _check_dicom_keyword(value: str) -> str:
    if not _DICOM_KEYWORD.fullmatch(value):
        raise _invalid(
            "dicom_keyword",
            f"{value!r} is not a DICOM keyword; use the attribute's keyword, letters and "
            "digits starting with a letter (e.g. PatientComments)",
        )
    return value


def _check_group_id(value: str) -> str:
    problem = group_id_problem(value)
    if problem is not None:
        raise _invalid("group_id", f"{value!r} {problem}")
    return value


def _check_project_label(value: str) -> str:
    problem = label_problem(value)
    if problem is not None:
        raise _invalid("label", f"{value!r} {problem}; it must be usable as a project label")
    return value


def _check_policy_string(value: str) -> str:
    text = value.strip()
    if not text or len(text) > 64 or contains_control_characters(text):
        raise _invalid(
            "policy_string",
            f"{value!r} is not an upload-policy string; use 1-64 visible characters "
            "(e.g. NOFW, NO-UPLOAD)",
        )
    return text


def _check_label_template(value: str) -> str:
    try:
        keywords = template_keywords(value)
    except ValueError as exc:
        raise _invalid("template", f"{value!r} is not a label template: {exc}") from None
    bad = [keyword for keyword in keywords if not _DICOM_KEYWORD.fullmatch(keyword)]
    if not keywords or bad:
        raise _invalid(
            "template",
            f"{value!r} is not a label template; name at least one DICOM keyword in braces, "
            "e.g. '{SeriesNumber} - {SeriesDescription}'",
        )
    return value


def _check_deid_profile(value: Any) -> Any:
    if value in ("none", "basic") or (isinstance(value, dict) and value):
        return value
    raise _invalid(
        "deid_profile",
        f"{_short_repr(value)} is not a de-identification profile; use none, basic, "
        "or a profile document (a mapping)",
    )


AETitle = Annotated[
    str,
    AfterValidator(_check_ae_title),
    Field(min_length=1, json_schema_extra={"maxLength": 16}),
]
Host = Annotated[
    str, AfterValidator(_check_host), Field(json_schema_extra={"minLength": 1, "maxLength": 253})
]
PolicyString = Annotated[
    str,
    AfterValidator(_check_policy_string),
    Field(json_schema_extra={"minLength": 1, "maxLength": 64}),
]
Port = Annotated[int, Field(ge=1, le=65535)]
DicomKeyword = Annotated[
    str,
    AfterValidator(_check_dicom_keyword),
    Field(json_schema_extra={"pattern": DICOM_KEYWORD_PATTERN}),
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _positive_duration(value: dt.timedelta) -> dt.timedelta:
    if value <= dt.timedelta(0):
        raise _invalid("duration", f"'{format_duration(value)}' is too short; use more than 0s")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive_duration)]


class _RoutingFields(_Section):
    """Where the routing string is read: `fields` in order (`field`: a one-element `fields`)."""

    fields: list[DicomKeyword] = Field(
        default_factory=lambda: ["PatientComments"],
        min_length=1,
        max_length=8,
        description="DICOM keywords of the attributes searched for a routing string, in order.",
    )
    field: DicomKeyword | None = Field(
        default=None,
        exclude=True,
        description="One keyword: the same as fields: [KEYWORD] (kept for older configs).",
    )

    @model_validator(mode="after")
    def _field_is_a_one_element_fields(self) -> Self:
        if self.field is None:
            return self
        if "fields" in self.model_fields_set and self.fields != [self.field]:
            raise _invalid(
                "routing",
                "field and fields are both set and differ; field is the older spelling of a "
                "one-element fields, so set only fields (e.g. fields: [PatientComments])",
            )
        object.__setattr__(self, "fields", [self.field])
        object.__setattr__(self, "field", None)
        return self

    @field_validator("fields")
    @classmethod
    def _fields_are_distinct(cls, fields: list[str]) -> list[str]:
        if len(set(fields)) != len(fields):
            raise _invalid("routing", f"fields {fields} lists a keyword twice; list each once")
        return fields


class RoutingConfig(_RoutingFields):
    """Where the routing string is read and where unroutable data goes.

    `fields` are tried in order and the first one holding a routing string wins. `field` (one
    keyword) is the first wave's spelling of a one-element `fields`; it is accepted on input
    and never written back.
    """

    unknown_group: Annotated[str, AfterValidator(_check_group_id)] = Field(
        default="unknown", description="Group id that receives data without a known group."
    )
    unsorted_project: Annotated[str, AfterValidator(_check_project_label)] = Field(
        default="Unsorted", description="Project label for data without a known project."
    )


_SITE_ONLY_ROUTING_KEYS = ("unknown_group", "unsorted_project")


class PeerRouting(_RoutingFields):
    """A scanner's own routing fields, used instead of the site's `routing.fields` for the
    series it sends (selected by the calling AE title of the association).

    The fallback names stay the site's: where unroutable data goes is one place per site.
    """

    @model_validator(mode="before")
    @classmethod
    def _fallback_names_are_per_site(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in _SITE_ONLY_ROUTING_KEYS:
                if key in data:
                    raise PydanticCustomError(
                        "invalid_routing",
                        "{reason}",
                        {
                            "reason": f"{key} is set for the whole site only (routing.{key}); "
                            "a scanner's routing block takes fields (or field)",
                            "subpath": key,
                        },
                    )
        return data


class DicomPeer(_Section):
    """A DICOM node allowed to send to the connector's SCP, with its own routing fields if it
    writes the routing string somewhere else than the site's `routing.fields`."""

    ae_title: AETitle
    host: Host
    routing: PeerRouting | None = Field(
        default=None,
        # Left out when unset, so a peer without one reads as before (and older agents,
        # which do not know the key, still accept such a config).
        exclude_if=lambda routing: routing is None,
        description="Routing fields for series this peer sends (matched by its calling AE "
        "title); null: the site's routing.",
    )


def _check_file_path(value: str) -> str:
    if not value.strip() or contains_control_characters(value) or len(value) > 4096:
        raise _invalid(
            "path",
            f"{_short_repr(value)} is not a file path; use the path of a PEM file on the "
            "agent's machine (e.g. /etc/dicom-connector/tls/agent.crt)",
        )
    return value


FilePath = Annotated[
    str, AfterValidator(_check_file_path), Field(json_schema_extra={"minLength": 1})
]


class DicomTls(_Section):
    """TLS on the connector's SCP and SCU (DICOM PS3.15 secure transport).

    Paths name PEM files on the agent's machine; they are read when a config revision is
    applied and again when their content changes, so a renewed certificate is used by the next
    association without a restart.
    """

    cert: FilePath = Field(description="The agent's certificate (PEM), chain after it if any.")
    key: FilePath = Field(description="The private key of `cert` (PEM, unencrypted).")
    ca: FilePath = Field(
        description="The CA certificate(s) (PEM) that peers' certificates must chain to."
    )
    require_client_cert: bool = Field(
        default=True,
        description="The SCP refuses peers without a certificate from `ca` (mutual TLS).",
    )


class DicomTimeouts(_Section):
    """How long the SCP waits for a peer before it gives up on an association."""

    artim: PositiveDuration = Field(
        default=dt.timedelta(seconds=30),
        description="From connection to association request, and for a release answer "
        "(the ARTIM timer); also bounds the TLS handshake.",
        json_schema_extra={"default": "30s"},
    )
    dimse: PositiveDuration = Field(
        default=dt.timedelta(seconds=60),
        description="Longest wait for the next DIMSE message or answer on an association.",
        json_schema_extra={"default": "60s"},
    )
    network: PositiveDuration = Field(
        default=dt.timedelta(seconds=120),
        description="An association with no traffic for this long is aborted.",
        json_schema_extra={"default": "120s"},
    )


class DicomConfig(_Section):
    """The connector's own DICOM node and who may talk to it."""

    ae_title: AETitle = Field(default="CONNECTOR", description="The connector's AE title.")
    port: Port = Field(default=11112, description="TCP port of the connector's SCP.")
    peers: list[DicomPeer] = Field(
        default_factory=list,
        description="Allowlist of sending nodes; an empty list accepts any peer.",
    )
    tls: DicomTls | None = Field(
        default=None, description="TLS (and mutual TLS) on the SCP and SCU; null: plain TCP."
    )
    max_associations: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Open associations over all the agent's intake processes; one more is "
        "rejected (transient, local limit exceeded).",
    )
    timeouts: DicomTimeouts = Field(default_factory=DicomTimeouts)

    @field_validator("peers")
    @classmethod
    def _one_routing_per_ae_title(cls, peers: list[DicomPeer]) -> list[DicomPeer]:
        # The routing block is chosen by calling AE title alone (the host is not known to the
        # reaper), so entries of one AE title on several hosts must agree on it.
        first: dict[str, int] = {}
        for index, peer in enumerate(peers):
            seen = first.setdefault(peer.ae_title, index)
            if peers[seen].routing != peer.routing:
                raise PydanticCustomError(
                    "invalid_routing",
                    "{reason}",
                    {
                        "reason": f"differs from dicom.peers[{seen}].routing, an entry of the "
                        f"same AE title {peer.ae_title!r}; a scanner's routing is chosen by its "
                        "AE title, so give every entry of that title the same routing block",
                        "subpath": f"[{index}].routing",
                    },
                )
        return peers

    def routing_for(self, calling_ae_title: str | None) -> tuple[PeerRouting, int] | None:
        """The routing block of the peer with this calling AE title and the index of its
        first entry; None when no listed peer of that title carries one."""
        if not calling_ae_title:
            return None
        title = calling_ae_title.strip(" ")
        for index, peer in enumerate(self.peers):
            if peer.ae_title == title and peer.routing is not None:
                return peer.routing, index
        return None


class PullSource(_Section):
    """A PACS or scanner that a pull connector queries (C-FIND) and retrieves from (C-MOVE)."""

    ae_title: AETitle
    host: Host
    port: Port
    retrieve: Literal["move", "get"] = Field(
        default="move",
        description="move: C-MOVE to the connector's own SCP (the source must know its AE "
        "title, host and port); get: C-GET, the source sends the images back on the "
        "connector's own association, for sources that cannot connect to the connector.",
    )
    timeout: PositiveDuration = Field(
        default=dt.timedelta(seconds=30),
        description="Longest wait for the source: to connect, to answer the association "
        "request, and between two DIMSE messages.",
        json_schema_extra={"default": "30s"},
    )


class PullConfig(_Section):
    """Where a pull connector looks for data, how far back, and how hard it may pull."""

    sources: list[PullSource] = Field(default_factory=list)
    lookback: PositiveDuration = Field(
        default=dt.timedelta(days=3),
        description="Each poll asks for studies dated from this long ago (in the site's "
        "timezone, whole days) onwards, never for everything on the source.",
        json_schema_extra={"default": "3d"},
    )
    max_concurrent_retrievals: int = Field(
        default=4,
        ge=1,
        le=32,
        description="Series retrieved at the same time, over all sources.",
    )

    @field_validator("sources")
    @classmethod
    def _sources_are_distinct(cls, sources: list[PullSource]) -> list[PullSource]:
        seen: set[tuple[str, str, int]] = set()
        for source in sources:
            key = (source.ae_title, source.host, source.port)
            if key in seen:
                raise _invalid(
                    "pull",
                    f"source {source.ae_title}@{source.host}:{source.port} is listed twice; "
                    "list each source once",
                )
            seen.add(key)
        return sources


class UploadPolicyConfig(_Section):
    """Opt-out (upload unless a string says no) or opt-in (upload only if a string says yes)."""

    mode: Literal["opt-out", "opt-in"] = "opt-out"
    strings: list[PolicyString] = Field(
        default_factory=lambda: ["NOFW"],
        description="The opt-out (or opt-in) strings, matched as whole words, any case.",
    )
    field: DicomKeyword = Field(
        default="PatientComments", description="DICOM keyword of the attribute to read."
    )

    @model_validator(mode="after")
    def _opt_in_needs_its_own_strings(self) -> Self:
        if self.mode != "opt-in":
            return self
        if "strings" not in self.model_fields_set:
            raise _invalid(
                "upload_policy",
                "mode opt-in needs its own opt-in strings, because the default [NOFW] is an "
                "opt-out string; set strings, e.g. strings: [UPLOAD]",
            )
        if not self.strings:
            raise _invalid(
                "upload_policy",
                "strings is empty, so opt-in would never upload anything; "
                "list at least one opt-in string, e.g. strings: [UPLOAD]",
            )
        return self


class TimingConfig(_Section):
    """Upload window, completion delay, vanish grace period, polling and health thresholds.

    The JSON Schema states each default as config text ("30s"); pydantic would otherwise
    publish ISO 8601 ("PT30S"), which a config document may not use.
    """

    working_hours: WorkingHoursField | None = Field(
        default=None, description="Upload window in the site's timezone; null means always."
    )
    acquisition_delay: Duration = Field(
        default=dt.timedelta(seconds=30),
        description="Quiet time after the last instance before a series is complete.",
        json_schema_extra={"default": "30s"},
    )
    grace_period: Duration = Field(
        default=dt.timedelta(days=7),
        description="How long a series that vanished from a source is remembered.",
        json_schema_extra={"default": "7d"},
    )
    sleep_time: Duration = Field(
        default=dt.timedelta(seconds=60),
        description="Time between checks for new data.",
        json_schema_extra={"default": "60s"},
    )
    query_time_threshold: Duration = Field(
        default=dt.timedelta(minutes=10),
        description="Query time above which health degrades.",
        json_schema_extra={"default": "10m"},
    )
    reap_time_threshold: Duration = Field(
        default=dt.timedelta(hours=1),
        description="Processing time of a series (reap, de-identification, upload) above "
        "which health degrades; judged on the longest over the last hour.",
        json_schema_extra={"default": "1h"},
    )
    upload_failure_threshold: Duration = Field(
        default=dt.timedelta(minutes=15),
        description="How long uploads may keep failing (no success in between) before health "
        "degrades.",
        json_schema_extra={"default": "15m"},
    )
    spool_age_threshold: Duration = Field(
        default=dt.timedelta(hours=2),
        description="Age of the oldest instance not yet uploaded above which health degrades "
        "(judged only while the upload window is open).",
        json_schema_extra={"default": "2h"},
    )

    @field_validator(
        "sleep_time",
        "query_time_threshold",
        "reap_time_threshold",
        "upload_failure_threshold",
        "spool_age_threshold",
    )
    @classmethod
    def _must_be_positive(cls, value: dt.timedelta) -> dt.timedelta:
        if value <= dt.timedelta(0):
            raise _invalid("duration", f"'{format_duration(value)}' is too short; use more than 0s")
        return value


AcquisitionGrouping = Literal[
    "series_instance_uid", "series_description", "series_number_acquisition_number"
]


class HierarchyConfig(_Section):
    """Which header attributes name subjects, sessions and acquisitions."""

    subject_field: DicomKeyword = Field(
        default="PatientID",
        description="Attribute whose value is the subject label when the routing string and "
        "the metadata patterns name none.",
    )
    session_field: DicomKeyword = Field(
        default="StudyDescription",
        description="Attribute whose value is the session label when the routing string and "
        "the metadata patterns name none (else StudyInstanceUID).",
    )
    acquisition_label: Annotated[str, AfterValidator(_check_label_template)] = Field(
        default="{SeriesDescription}",
        description="Template of the acquisition label over header keywords, e.g. "
        "'{SeriesNumber} - {SeriesDescription}'; when a named attribute is empty or the "
        "result is not a usable label, 'Series <SeriesNumber>', then the SeriesInstanceUID.",
    )
    acquisition_grouping: AcquisitionGrouping = Field(
        default="series_instance_uid",
        description="What groups series into one acquisition: the SeriesInstanceUID, the "
        "SeriesDescription, or SeriesNumber with AcquisitionNumber.",
    )


class MetadataPattern(_Section):
    """A regular expression with named groups over one attribute's value.

    Named groups `group`, `project`, `subject`, `session` and `acquisition` fill those labels
    when the routing string does not; any other named group is kept as session metadata.
    """

    field: DicomKeyword
    regex: Annotated[str, AfterValidator(check_pattern)]


class MetadataConfig(_Section):
    """Metadata extraction patterns, tried in order; the first match of each label wins."""

    patterns: list[MetadataPattern] = Field(default_factory=list, max_length=32)


class DeidConfig(_Section):
    """The de-identification applied before data leaves the site.

    A profile document is checked here with fw-file-rs, so a bad one is refused when the
    config is saved (naming the key inside the profile), never first found on an agent.
    """

    profile: Annotated[
        Literal["none", "basic"] | dict[str, Any], BeforeValidator(_check_deid_profile)
    ] = Field(
        default="none",
        description="none, basic (DICOM PS3.15 Basic Application Level Confidentiality "
        "Profile), or a Flywheel-format profile document (version: 1, dicom: {...}).",
    )
    options: list[BasicOption] = Field(
        default_factory=list,
        description="Options of the basic profile (PS3.15 Table E.1-1): "
        + ", ".join(BASIC_OPTIONS)
        + ".",
    )

    @field_validator("profile")
    @classmethod
    def _profile_document_applies(cls, profile: str | dict[str, Any]) -> str | dict[str, Any]:
        if isinstance(profile, dict):
            problems = profile_problems(profile)
            if problems:
                raise _deid_profile_problem(problems)
        return profile

    @field_validator("options")
    @classmethod
    def _options_listed_once(cls, options: list[BasicOption]) -> list[BasicOption]:
        repeated = sorted({option for option in options if options.count(option) > 1})
        if repeated:
            raise _invalid("deid_options", f"{', '.join(repeated)} listed twice; list each once")
        return options

    @model_validator(mode="after")
    def _options_need_basic(self) -> Self:
        if self.options and self.profile != "basic":
            raise _invalid(
                "deid_options",
                "options apply to profile basic only; set profile: basic, or remove options "
                "(a profile document states its own rules)",
            )
        return self


def _deid_profile_problem(problems: list[tuple[str, str]]) -> PydanticCustomError:
    path, message = problems[0]
    more = len(problems) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''} in the profile)"
    # The path inside the profile goes after deid.profile in the dotted key (see _describe).
    return PydanticCustomError(
        "invalid_deid_profile", "{reason}", {"reason": message, "subpath": path}
    )


def _check_http_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid(
            "url",
            f"{_short_repr(value)} is not an http:// or https:// URL with a host "
            "(e.g. https://pacs.example.org/dicom-web)",
        )
    if parts.username is not None or parts.password is not None:
        # A URL is shown in health and logs; a secret in it would be too.
        raise _invalid(
            "url",
            "the URL carries a user name or password; remove it and put the credential "
            "in the destination's token or key file",
        )
    return value.rstrip("/")


def _check_secret_file(value: str) -> str:
    if not value.startswith("/") or "\0" in value:
        raise _invalid(
            "secret_file",
            f"{_short_repr(value)} is not an absolute path; name the file on the agent's "
            "machine that holds the secret (e.g. /etc/dicom-connector/pacs-token)",
        )
    return value


HttpUrlText = Annotated[
    str, AfterValidator(_check_http_url), Field(json_schema_extra={"format": "uri"})
]
SecretFile = Annotated[str, AfterValidator(_check_secret_file)]


class BuiltinDestination(_Section):
    """The control plane's own hierarchy store (the default)."""

    kind: Literal["builtin"] = "builtin"


class DicomwebDestination(_Section):
    """A DICOMweb archive; instances go in with STOW-RS (DICOM PS3.18)."""

    kind: Literal["dicomweb"]
    url: HttpUrlText = Field(description="The DICOMweb base URL; STOW-RS posts to {url}/studies.")
    token_file: SecretFile | None = Field(
        default=None,
        description="File on the agent's machine holding a bearer token, read on every "
        "request; none sends no Authorization header.",
    )


class FlywheelDestination(_Section):
    """A Flywheel site; instances go in with its label upload (`POST /api/upload/label`)."""

    kind: Literal["flywheel"]
    url: HttpUrlText = Field(description="The Flywheel site, e.g. https://x.flywheel.io.")
    api_key_file: SecretFile = Field(
        description="File on the agent's machine holding the Flywheel API key, read on "
        "every request."
    )


_DESTINATION_KINDS: dict[str, type[_Section]] = {
    "builtin": BuiltinDestination,
    "dicomweb": DicomwebDestination,
    "flywheel": FlywheelDestination,
}


def _check_destination_shape(value: Any) -> Any:
    """Name a missing or unknown `kind`, or a key the chosen kind does not have, clearly."""
    kinds = ", ".join(_DESTINATION_KINDS)
    if not isinstance(value, dict):
        raise _invalid(
            "destination",
            f"{_short_repr(value)} is not a mapping; use {{kind: K, ...}} with K one of {kinds}",
        )
    kind = value.get("kind")
    if kind is None:
        raise _invalid("destination", f"kind is missing; use one of {kinds}")
    model = _DESTINATION_KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise _invalid("destination", f"kind {_short_repr(kind)} is not allowed; use {kinds}")
    unknown = [key for key in value if key not in model.model_fields]
    if unknown:
        allowed = ", ".join(model.model_fields)
        raise _invalid(
            "destination",
            f"unknown key {_short_repr(unknown[0])} for kind {kind}; allowed keys: {allowed}",
        )
    return value


DestinationConfig = Annotated[
    BuiltinDestination | DicomwebDestination | FlywheelDestination,
    Field(discriminator="kind"),
    BeforeValidator(_check_destination_shape),
]
GroupIdKey = Annotated[str, AfterValidator(_check_group_id)]


class UploadConfig(_Section):
    """How the agent sends what it reaped."""

    concurrency: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Chunk requests in flight at once, over all destinations; null keeps the "
        "agent's own setting (DICOM_CONNECTOR_AGENT_UPLOAD_CONCURRENCY, default 4).",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_bandwidth_limit_yet(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_bandwidth" in data:
            raise _invalid(
                "upload",
                "max_bandwidth is not implemented: uploads are not rate-limited; remove the "
                "key (limit the agent's bandwidth on its network instead)",
            )
        return data


class SiteConfig(_Section):
    """One site's config document: every key of DESIGN.md "Site config", with its default."""

    model_config = ConfigDict(title="SiteConfig")

    mode: Literal["push", "pull"] = Field(
        default="push", description="push: receive C-STORE; pull: query and retrieve sources."
    )
    dicom: DicomConfig = Field(default_factory=DicomConfig)
    pull: PullConfig = Field(default_factory=PullConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    upload_policy: UploadPolicyConfig = Field(default_factory=UploadPolicyConfig)
    timing: TimingConfig = Field(default_factory=TimingConfig)
    metadata: MetadataConfig = Field(default_factory=MetadataConfig)
    hierarchy: HierarchyConfig = Field(default_factory=HierarchyConfig)
    deid: DeidConfig = Field(default_factory=DeidConfig)
    destination: DestinationConfig = Field(
        default_factory=BuiltinDestination,
        description="Where reaped series go: builtin, dicomweb or flywheel.",
    )
    destination_by_group: dict[GroupIdKey, DestinationConfig] = Field(
        default_factory=dict,
        description="Per-group overrides of destination, keyed by group id.",
    )
    upload: UploadConfig = Field(default_factory=UploadConfig)

    @model_validator(mode="after")
    def _pull_needs_sources(self) -> Self:
        if self.mode == "pull" and not self.pull.sources:
            raise _invalid(
                "pull",
                "pull.sources is empty but mode is pull, so nothing would ever be queried; "
                "list at least one source as {ae_title, host, port}",
            )
        return self


class ConfigError(ValueError):
    """A site config that cannot be used; ``problems`` has one line per problem found.

    Each problem reads ``dotted.key: what was wrong; what is allowed``, for example
    ``timing.acquisition_delay: '30 parsecs' is not a duration; use a number with s, m, h or d
    (e.g. 30s, 10m, 7d)``.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        count = len(self.problems)
        heading = "1 problem" if count == 1 else f"{count} problems"
        return f"invalid site config ({heading}):\n" + "\n".join(
            f"  {problem}" for problem in self.problems
        )

    @classmethod
    def from_validation_error(cls, error: ValidationError) -> ConfigError:
        """Turn pydantic's errors for a `SiteConfig` into readable problems."""
        return cls([_describe(detail) for detail in error.errors(include_url=False)])


def validate_site_config(data: Mapping[str, Any]) -> SiteConfig:
    """Validate an already-parsed config document.

    Raises:
        ConfigError: listing every problem.
    """
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.from_validation_error(exc) from None


def load_site_config(text: str) -> SiteConfig:
    """Parse and validate a config document written in YAML or JSON.

    An empty document (or only comments) gives every default. YAML is read with YAML 1.2
    scalars: ``no``, ``on`` or ``off`` stay text and ``1:30`` is not a base-60 number, so an
    AE title or an opt-out string is never turned into a boolean. A key given twice in one
    mapping is an error rather than last-one-wins.

    Raises:
        ConfigError: for unreadable text, a document that is not a mapping, or invalid values.
    """
    document = _parse_document(text)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(
            [
                "the site config must be a mapping with the keys "
                f"{', '.join(SiteConfig.model_fields)}; got {type(document).__name__} "
                f"{_short_repr(document)}"
            ]
        )
    return validate_site_config(document)


def parse_document(text: str) -> Any:
    """Parse a YAML or JSON document the way site configs are read (YAML 1.2 scalars, no
    duplicate keys) without validating it: for config fragments such as rollout patches.

    Raises:
        ConfigError: for text that is neither valid YAML nor JSON.
    """
    return _parse_document(text)


def dicom_keywords(config: SiteConfig) -> list[tuple[str, str]]:
    """Every DICOM keyword the config names, as ``(dotted key, keyword)``."""
    named = [
        (f"routing.fields[{index}]", keyword) for index, keyword in enumerate(config.routing.fields)
    ]
    named += [
        (f"dicom.peers[{index}].routing.fields[{position}]", keyword)
        for index, peer in enumerate(config.dicom.peers)
        if peer.routing is not None
        for position, keyword in enumerate(peer.routing.fields)
    ]
    named.append(("upload_policy.field", config.upload_policy.field))
    named += [
        ("hierarchy.subject_field", config.hierarchy.subject_field),
        ("hierarchy.session_field", config.hierarchy.session_field),
    ]
    named += [
        ("hierarchy.acquisition_label", keyword)
        for keyword in template_keywords(config.hierarchy.acquisition_label)
    ]
    named += [
        (f"metadata.patterns[{index}].field", pattern.field)
        for index, pattern in enumerate(config.metadata.patterns)
    ]
    return named


def dictionary_problems(config: SiteConfig, vr_of: Callable[[str], str | None]) -> list[str]:
    """What the DICOM data dictionary says is wrong with `config`, as ``key: problem`` lines.

    `vr_of` maps a keyword to its VR, None for a keyword the dictionary lacks (pydicom's
    dictionary, passed in because this module must not import pydicom). Finds keywords that
    do not exist and metadata patterns that can never match their attribute's VR.
    """
    problems = [
        f"{where}: {keyword!r} is not a keyword of the DICOM data dictionary; spell it as the "
        "standard does (e.g. PatientComments)"
        for where, keyword in dicom_keywords(config)
        if vr_of(keyword) is None
    ]
    for index, pattern in enumerate(config.metadata.patterns):
        vr = vr_of(pattern.field)
        problem = vr_problem(pattern.regex, vr) if vr is not None else None
        if problem is not None:
            problems.append(f"metadata.patterns[{index}].regex: {problem} ({pattern.field})")
    return problems


def site_config_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a site config document."""
    schema = SiteConfig.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


# --- reading YAML and JSON ---------------------------------------------------------------


def _parse_document(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_json_object_without_duplicates)
    except json.JSONDecodeError:
        pass
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"not valid YAML or JSON{where}: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML or JSON: {exc}"]) from None
    finally:
        loader.dispose()


def _json_object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ConfigError([f"key {key!r} appears twice in one object; keep one"])
        result[key] = value
    return result


_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars and refusal of duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise ConfigError(
                    [f"key {key!r} appears twice (line {key_node.start_mark.line + 1}); keep one"]
                )
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp) for tag, regexp in resolvers if tag not in {_BOOL, _INT, _FLOAT, _TIMESTAMP}
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_ConfigLoader.add_implicit_resolver(
    _INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
)
_ConfigLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?[0-9]+[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


# --- turning pydantic errors into problems -------------------------------------------------


def _describe(detail: ErrorDetails) -> str:
    location = _dotted(detail["loc"])
    subpath = (detail.get("ctx") or {}).get("subpath")
    if subpath:
        location += subpath if subpath.startswith("[") else f".{subpath}"
    message = _message(detail)
    return f"{location}: {message}" if location else message


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not text:
            text = part
        else:
            text += f".{part}"
    return text


def _message(detail: ErrorDetails) -> str:
    kind = detail["type"]
    value = detail.get("input")
    context = detail.get("ctx") or {}
    loc = detail["loc"]
    if kind.startswith("invalid_"):
        return detail["msg"]
    if kind == "extra_forbidden":
        return _unknown_key_message(loc)
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"{_short_repr(value)} is not allowed; use {context.get('expected')}"
    if kind == "greater_than_equal":
        return f"{_short_repr(value)} is too small; use at least {context.get('ge')}"
    if kind == "less_than_equal":
        return f"{_short_repr(value)} is too large; use at most {context.get('le')}"
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return f"{_short_repr(value)} is not a whole number"
    if kind == "string_type":
        return f"{_short_repr(value)} is not text; put it in quotes"
    if kind == "list_type":
        return f"{_short_repr(value)} is not a list; use [item, ...]"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        keys = _allowed_keys(loc)
        allowed = f" with the keys {', '.join(keys)}" if keys else ""
        return f"{_short_repr(value)} is not a mapping; use a mapping{allowed}"
    text = detail["msg"]
    return f"{_short_repr(value)} is not valid: {text[:1].lower()}{text[1:]}"


def _unknown_key_message(loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1])
    allowed = _allowed_keys(loc[:-1])
    suggestion = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {suggestion[0]!r}?)" if suggestion else ""
    return f"unknown key{hint}; allowed keys here: {', '.join(allowed)}"


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] | None = SiteConfig
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
