"""Where the admin token comes from: a flag, else the environment, else a file under the data dir.

Shared by `all-in-one` and `control-plane` so both follow the same rule (DESIGN.md, Commands).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

ADMIN_TOKEN_ENV = "DICOM_CONNECTOR_ADMIN_TOKEN"  # noqa: S105 - a variable name, not a secret
ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 - a file name, not a secret
# A file holding the token (a Docker or Kubernetes secret), so the token itself never sits in
# a manifest or a process environment.
ADMIN_TOKEN_FILE_ENV = "DICOM_CONNECTOR_ADMIN_TOKEN_FILE"  # noqa: S105 - a variable name


def resolve_admin_token(flag_value: str | None, data_dir: Path | None) -> str:
    """Return the admin token: the flag, else the environment (the token, else a file it names
    in DICOM_CONNECTOR_ADMIN_TOKEN_FILE), else `DATA_DIR/admin-token`.

    When none is set and a data dir is given, a token is generated once and written there with
    mode 0600, so a restart on the same data dir keeps working with the same token.
    """
    if flag_value:
        return flag_value
    from_env = os.environ.get(ADMIN_TOKEN_ENV)
    if from_env:
        return from_env
    token_file = os.environ.get(ADMIN_TOKEN_FILE_ENV)
    if token_file:
        try:
            return Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(
                f"cannot read the admin token file named by {ADMIN_TOKEN_FILE_ENV}"
                f" ({token_file}): {exc.strerror}"
            ) from None
    if data_dir is None:
        raise ValueError(
            f"no admin token: pass --admin-token or set {ADMIN_TOKEN_ENV} "
            "(the control plane refuses to run without one)"
        )
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    token = secrets.token_urlsafe(32)
    write_secret(path, token)
    return token


def write_secret(path: Path, value: str) -> None:
    """Write a secret readable by its owner only, atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
