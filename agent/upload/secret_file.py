"""Secrets of external destinations (a bearer token, an API key), read from their files.

They are read on every request, so an admin rotates one by rewriting its file, without a
restart. Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

from pathlib import Path

from agent.upload.base import UploadError


def read_secret(path: Path, what: str) -> str:
    """The secret in `path`, stripped of surrounding whitespace.

    Raises `UploadError` (retryable: the instances wait until an admin fixes the file) when
    the file cannot be read or is empty. The message names the file, never its content.
    """
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UploadError(True, f"cannot read the {what} file {path}: {exc.strerror}") from exc
    if not secret:
        raise UploadError(True, f"the {what} file {path} is empty; write the {what} into it")
    return secret
