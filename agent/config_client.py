"""The agent's site config at start-up, its validation, and its last-known-good copy.

`parse_snapshot` is the one validation of a config, whichever way it came: the `SiteConfig`
model (`common.config.validate_site_config`) plus the DICOM keywords it names, which only the
agent can check. The last config that was applied is kept in `DATA/config.json` (temp file,
fsync, replace), so an agent restarted while the control plane is away runs on it.

Every config after start-up arrives over the link (`agent.link`). Only a fresh agent, with no
stored config, asks `GET /api/v1/agent/config` (answer `{"site", "revision", "timezone",
"config", "deid_salt", "deployment"}`; an in-cluster agent refuses a config that breaks the
in-cluster rules of `common.deployment`, and keeps waiting) before it can start its listener:
HTTP rather than the link, because the link needs a running agent to apply to.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
import structlog

from agent.http_retry import is_retryable
from agent.retry import backoff
from agent.site import ConfigRefused, SiteSnapshot, parse_snapshot
from agent.tls import describe_verification_failure, verification_failure
from common.deployment import IN_CLUSTER, in_cluster_problems

CONFIG_PATH = "/api/v1/agent/config"
CONFIG_FILE_NAME = "config.json"
# A fresh agent waiting for its first config should notice the control plane within a minute.
_INITIAL_WAIT_CAP_SECONDS = 60.0

log = structlog.get_logger(__name__)


class ConfigUnavailable(Exception):
    """The control plane could not be asked, or did not answer with a config."""


class ConfigClient:
    """Asks the control plane for this agent's config and keeps the last-known-good copy."""

    def __init__(
        self,
        base_url: str,
        token_file: Path,
        data_dir: Path,
        *,
        client: httpx2.AsyncClient | None = None,
        timeout: float = 30.0,
        verify: ssl.SSLContext | bool = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + CONFIG_PATH
        self._token_file = token_file
        self._path = data_dir / CONFIG_FILE_NAME
        self._owns_client = client is None
        self._client = client or httpx2.AsyncClient(timeout=timeout, verify=verify)
        self._sleep = sleep
        self._rng = rng
        self.last_error: str | None = None

    @property
    def path(self) -> Path:
        """Where the last-known-good config is kept."""
        return self._path

    async def fetch(self) -> SiteSnapshot:
        """Ask the control plane once.

        Raises `ConfigUnavailable` (unreachable, error status, unreadable token) or
        `ConfigRefused` (an answer that is not a valid config).
        """
        token = await asyncio.to_thread(self._read_token)
        try:
            response = await self._client.get(
                self._url, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx2.HTTPError as exc:
            refused = verification_failure(exc)
            if refused is not None:
                raise ConfigUnavailable(describe_verification_failure(refused, self._url)) from exc
            raise ConfigUnavailable(
                f"control plane unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        if response.status_code in (401, 403):
            raise ConfigUnavailable(
                f"control plane refused the agent token (HTTP {response.status_code}); "
                f"check the token in {self._token_file}"
            )
        if response.status_code != 200:
            kind = "temporary" if is_retryable(response.status_code) else "unexpected"
            raise ConfigUnavailable(
                f"control plane answered HTTP {response.status_code} ({kind}) for {CONFIG_PATH}"
            )
        try:
            document = response.json()
        except ValueError as exc:
            raise ConfigRefused("the answer is not JSON") from exc
        snapshot = parse_snapshot(document)
        # The link's welcome says the same, but only once the agent runs: an in-cluster agent
        # must not start its listener on a config that breaks the in-cluster rules.
        deployment = document.get("deployment") if isinstance(document, dict) else None
        if deployment == IN_CLUSTER and (problems := in_cluster_problems(snapshot.config)):
            raise ConfigRefused(
                f"revision {snapshot.revision}: this agent runs in-cluster, where connectors "
                "use mutual TLS and push only: " + "; ".join(problems)
            )
        return snapshot

    async def initial(self) -> SiteSnapshot:
        """The config to start on: the last-known-good, else the control plane's.

        A stored config is enough to start: the link hands over any newer revision right
        after start-up, so an agent whose control plane is away for days starts at once.
        With none stored, asks the control plane over HTTP, waiting and retrying with backoff
        (saying so in the log) until it answers with a valid config, which is then stored.
        """
        stored = await asyncio.to_thread(self.load_last_known_good)
        if stored is not None:
            log.info("config.last_known_good", revision=stored.revision, site=stored.site)
            return stored
        attempt = 0
        while True:
            try:
                fetched = await self.fetch()
            except (ConfigUnavailable, ConfigRefused) as exc:
                self.last_error = str(exc)
                delay = backoff(attempt, cap=_INITIAL_WAIT_CAP_SECONDS, rng=self._rng)
                log.warning(
                    "config.waiting_for_control_plane",
                    error=str(exc),
                    attempt=attempt + 1,
                    duration_ms=round(delay * 1000),
                    url=self._url,
                )
                await self._sleep(delay)
                attempt += 1
                continue
            self.last_error = None
            await asyncio.to_thread(self.save, fetched)
            log.info("config.loaded", revision=fetched.revision, site=fetched.site)
            return fetched

    def load_last_known_good(self) -> SiteSnapshot | None:
        """The stored last-known-good config, or None when there is none that is usable."""
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return parse_snapshot(json.loads(text))
        except (ValueError, ConfigRefused) as exc:
            # An upgrade can make an old stored config invalid; the control plane's copy is
            # the authority, so the agent asks it rather than refusing to start.
            log.error("config.last_known_good_unusable", path=str(self._path), error=str(exc))
            return None

    def save(self, snapshot: SiteSnapshot) -> None:
        """Store `snapshot` as the last-known-good config, atomically."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(snapshot.to_json(), indent=2, sort_keys=True).encode()
        fd, temp_name = tempfile.mkstemp(dir=self._path.parent, prefix=f".{CONFIG_FILE_NAME}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, self._path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        directory = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it; idempotent."""
        if self._owns_client:
            await self._client.aclose()

    def _read_token(self) -> str:
        try:
            token = self._token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigUnavailable(
                f"cannot read the agent token file {self._token_file}: {exc.strerror}"
            ) from exc
        if not token:
            raise ConfigUnavailable(f"the agent token file {self._token_file} is empty")
        return token
