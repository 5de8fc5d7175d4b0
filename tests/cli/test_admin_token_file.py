"""The admin token can come from a file named in the environment (a Docker/Kubernetes secret)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.tokens import ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE_ENV, resolve_admin_token


def test_the_admin_token_is_read_from_the_file_the_environment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "admin-token"
    secret.write_text("token-from-a-secret-file-0123456789\n", encoding="utf-8")
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    monkeypatch.setenv(ADMIN_TOKEN_FILE_ENV, str(secret))

    assert resolve_admin_token(None, None) == "token-from-a-secret-file-0123456789"
    # The flag and the variable holding the token itself still come first.
    assert resolve_admin_token("from-the-flag", None) == "from-the-flag"


def test_an_unreadable_token_file_is_refused_with_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    monkeypatch.setenv(ADMIN_TOKEN_FILE_ENV, str(tmp_path / "missing"))

    with pytest.raises(ValueError, match="cannot read the admin token file"):
        resolve_admin_token(None, None)
