"""The `destination` and `destination_by_group` keys of the site config."""

from __future__ import annotations

import pytest

from common.config import (
    BuiltinDestination,
    ConfigError,
    DicomwebDestination,
    FlywheelDestination,
    load_site_config,
)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_site_config(text)
    return raised.value.problems


def test_the_default_destination_is_the_builtin_store_for_every_group() -> None:
    config = load_site_config("")

    assert config.destination == BuiltinDestination()
    assert config.destination_by_group == {}
    assert config.model_dump(mode="json")["destination"] == {"kind": "builtin"}


def test_a_dicomweb_destination_keeps_its_url_without_a_trailing_slash_and_its_token_file() -> None:
    config = load_site_config(
        "destination: {kind: dicomweb, url: 'https://pacs.example.org/dicom-web/',"
        " token_file: /etc/dc/pacs-token}"
    )

    assert config.destination == DicomwebDestination(
        kind="dicomweb", url="https://pacs.example.org/dicom-web", token_file="/etc/dc/pacs-token"
    )


def test_destination_by_group_overrides_per_group_and_round_trips_through_json() -> None:
    text = (
        "destination_by_group:\n"
        "  neuro: {kind: flywheel, url: 'https://x.flywheel.io', api_key_file: /etc/dc/fw-key}\n"
        "  unknown: {kind: builtin}\n"
    )
    config = load_site_config(text)

    assert config.destination_by_group == {
        "neuro": FlywheelDestination(
            kind="flywheel", url="https://x.flywheel.io", api_key_file="/etc/dc/fw-key"
        ),
        "unknown": BuiltinDestination(),
    }
    assert load_site_config(config.model_dump_json()) == config


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "destination: {kind: s3}",
            "destination: kind 's3' is not allowed; use builtin, dicomweb, flywheel",
        ),
        (
            "destination: {url: 'https://pacs'}",
            "destination: kind is missing; use one of builtin, dicomweb, flywheel",
        ),
        ("destination: {kind: dicomweb}", "destination.dicomweb.url: required key is missing"),
        (
            "destination: {kind: dicomweb, url: 'ftp://pacs'}",
            "destination.dicomweb.url: 'ftp://pacs' is not an http:// or https:// URL with a"
            " host (e.g. https://pacs.example.org/dicom-web)",
        ),
        (
            "destination: {kind: dicomweb, url: 'https://me:secret@pacs'}",
            "destination.dicomweb.url: the URL carries a user name or password; remove it and"
            " put the credential in the destination's token or key file",
        ),
        (
            "destination: {kind: dicomweb, url: 'https://pacs', tokn_file: /t}",
            "destination: unknown key 'tokn_file' for kind dicomweb; allowed keys: kind, url,"
            " token_file",
        ),
        (
            "destination: {kind: flywheel, url: 'https://x.flywheel.io'}",
            "destination.flywheel.api_key_file: required key is missing",
        ),
        (
            "destination: {kind: flywheel, url: 'https://x.flywheel.io', api_key_file: key}",
            "destination.flywheel.api_key_file: 'key' is not an absolute path; name the file on"
            " the agent's machine that holds the secret (e.g. /etc/dicom-connector/pacs-token)",
        ),
        (
            "destination: builtin",
            "destination: 'builtin' is not a mapping; use {kind: K, ...} with K one of builtin,"
            " dicomweb, flywheel",
        ),
        (
            "destination_by_group: {'Neuro Lab': {kind: builtin}}",
            "destination_by_group.Neuro Lab.[key]: 'Neuro Lab' is not a group id; use 1-64"
            " lowercase letters, digits, '_' or '-', starting with a letter or digit",
        ),
        (
            "destination_by_group: {neuro: {kind: dicomweb, url: 'https://pacs', extra: 1}}",
            "destination_by_group.neuro: unknown key 'extra' for kind dicomweb; allowed keys:"
            " kind, url, token_file",
        ),
        (
            "upload: {concurrency: 8, max_bandwidth: 20MB/s}",
            "upload: max_bandwidth is not implemented: uploads are not rate-limited; remove the"
            " key (limit the agent's bandwidth on its network instead)",
        ),
        ("upload: {concurrency: 0}", "upload.concurrency: 0 is too small; use at least 1"),
    ],
)
def test_a_bad_destination_or_upload_key_is_refused_naming_the_key(text: str, problem: str) -> None:
    assert problems_of(text) == [problem]


def test_upload_concurrency_defaults_to_the_agents_own_setting() -> None:
    assert load_site_config("").upload.concurrency is None
    assert load_site_config("upload: {concurrency: 8}").upload.concurrency == 8
