"""Control-plane settings: database URLs are normalised, weak admin tokens refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from control_plane.database_url import sync_database_url
from control_plane.settings import ControlPlaneSettings

GOOD_TOKEN = "a-long-enough-admin-token"


def _settings(**overrides: object) -> ControlPlaneSettings:
    values: dict[str, object] = {
        "database_url": "sqlite:///data/cp.db",
        "blob_dir": Path("blobs"),
        "admin_token": GOOD_TOKEN,
        **overrides,
    }
    return ControlPlaneSettings.model_validate(values)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///data/cp.db", "sqlite+aiosqlite:///data/cp.db"),
        ("sqlite+aiosqlite:////abs/cp.db", "sqlite+aiosqlite:////abs/cp.db"),
        ("postgresql://u:p@db:5432/cp", "postgresql+psycopg://u:p@db:5432/cp"),
        ("postgresql+psycopg://u:p@db/cp", "postgresql+psycopg://u:p@db/cp"),
        ("postgres://db/cp", "postgresql+psycopg://db/cp"),
    ],
)
def test_database_url_is_normalised_to_the_async_driver(given: str, expected: str) -> None:
    assert _settings(database_url=given).database_url == expected


def test_migrations_use_the_sync_flavour_of_the_same_driver() -> None:
    assert sync_database_url("sqlite+aiosqlite:///cp.db") == "sqlite:///cp.db"
    assert sync_database_url("postgresql://db/cp") == "postgresql+psycopg://db/cp"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("mysql://db/cp", "'mysql' is not supported"),
        ("postgresql+asyncpg://db/cp", "'postgresql+asyncpg' is not supported"),
        ("sqlite://", "give a file path"),
        ("sqlite:///:memory:", "give a file path"),
        ("not a url", "could not be parsed"),
    ],
)
def test_unsupported_database_url_is_refused_with_the_accepted_forms(
    given: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as raised:
        _settings(database_url=given)
    assert "postgresql+psycopg://" in str(raised.value) or "file path" in str(raised.value)


@pytest.mark.parametrize(("token", "described"), [("", "empty"), ("short", "5 characters long")])
def test_weak_admin_token_is_refused_with_how_to_make_one(token: str, described: str) -> None:
    with pytest.raises(ValidationError, match=described) as raised:
        _settings(admin_token=token)
    assert "at least 16 characters" in str(raised.value)
    assert "token_urlsafe" in str(raised.value)


def test_errors_do_not_echo_the_rejected_token_or_database_password() -> None:
    with pytest.raises(ValidationError) as raised:
        _settings(admin_token="secret-ish", database_url="mysql://user:hunter2@db/cp")
    assert "secret-ish" not in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_settings_are_read_from_prefixed_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DICOM_CONNECTOR_DATABASE_URL", f"sqlite:///{tmp_path / 'cp.db'}")
    monkeypatch.setenv("DICOM_CONNECTOR_BLOB_DIR", str(tmp_path / "blobs"))
    monkeypatch.setenv("DICOM_CONNECTOR_ADMIN_TOKEN", GOOD_TOKEN)
    monkeypatch.setenv("DICOM_CONNECTOR_MIGRATE_ON_START", "false")

    settings = ControlPlaneSettings()

    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.blob_dir == tmp_path / "blobs"
    assert settings.admin_token.get_secret_value() == GOOD_TOKEN
    assert settings.migrate_on_start is False


def test_admin_token_is_not_shown_in_the_settings_repr() -> None:
    assert GOOD_TOKEN not in repr(_settings())


def test_an_s3_blob_url_stands_in_for_the_blob_dir() -> None:
    settings = _settings(blob_dir=None, blob_url="s3://bucket/connector")

    assert (settings.blob_dir, settings.blob_url) == (None, "s3://bucket/connector")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"blob_url": "s3://bucket/connector"}, "not both"),
        ({"blob_dir": None}, "exactly one of blob_dir"),
        ({"blob_dir": None, "blob_url": "https://bucket/x"}, "s3://BUCKET"),
        ({"blob_dir": None, "blob_url": "s3:///no-bucket"}, "s3://BUCKET"),
    ],
)
def test_the_blob_store_is_given_exactly_once_and_as_s3(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        _settings(**overrides)
