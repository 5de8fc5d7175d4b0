"""`dicom-connector all-in-one`: the control plane and one agent on this machine.

The agent runs as a separate process and reaches the control plane through the same HTTP
interface a remote agent uses, so the embedded default exercises the production path. This
module is only a supervisor: it starts both processes, bootstraps the `default` site and its
agent through the admin API, prints `ready`, and stops both on SIGTERM/SIGINT. If either
child dies, the other is stopped and the command exits non-zero so a service manager restarts
the pair (restart on the same data dir resumes from the agent's spool and state).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

from cli.tokens import ADMIN_TOKEN_ENV, resolve_admin_token, write_secret
from common.config import SiteConfig, load_site_config

SITE_NAME = "default"
AGENT_NAME = "default"
AGENT_READY_PREFIX = "agent-ready"
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


class AllInOneError(RuntimeError):
    """A start-up step failed; the message says which and what to do."""


def _die_with_parent() -> None:
    # Children get SIGTERM when the supervisor dies, even by SIGKILL, so a killed all-in-one
    # never leaves an orphaned agent holding the DICOM port (Linux-only; a no-op elsewhere).
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _spawn(args: list[str], *, env: dict[str, str], capture: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env=env,
        stdout=subprocess.PIPE if capture else None,
        text=True,
        # Own session: a terminal's Ctrl-C reaches only the supervisor, which then stops the
        # agent before the control plane so in-flight uploads can still be confirmed.
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def local_timezone() -> str:
    """The machine's IANA timezone name (`TZ`, else /etc/localtime), falling back to UTC."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        return tz
    with contextlib.suppress(OSError):
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    return "UTC"


def _wait_for_http(client: httpx2.Client, proc: subprocess.Popen[str], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AllInOneError(
                f"the control plane exited with status {proc.returncode}; see above"
            )
        with contextlib.suppress(httpx2.TransportError):
            if client.get("/healthz").status_code == 200:
                return
        time.sleep(0.1)
    raise AllInOneError("the control plane did not answer /healthz in time")


def _check(response: httpx2.Response, what: str) -> Any:
    if response.is_success:
        return response.json()
    raise AllInOneError(f"{what} failed: HTTP {response.status_code}: {response.text}")


def _desired_config(client: httpx2.Client, config_file: Path | None, dicom_port: int) -> SiteConfig:
    """The site config to run: the file when given, else the current revision; port overridden."""
    if config_file is not None:
        config = load_site_config(config_file.read_text(encoding="utf-8"))
    else:
        current = _check(client.get(f"/api/v1/sites/{SITE_NAME}/config"), "reading the site config")
        config = SiteConfig.model_validate(current["config"])
    return config.model_copy(update={"dicom": config.dicom.model_copy(update={"port": dicom_port})})


def bootstrap(
    client: httpx2.Client, *, config_file: Path | None, dicom_port: int, token_file: Path
) -> int:
    """Make sure the `default` site, its config and its agent exist; return the config revision."""
    sites = _check(client.get("/api/v1/sites"), "listing sites")["items"]
    if not any(site["name"] == SITE_NAME for site in sites):
        _check(
            client.post("/api/v1/sites", json={"name": SITE_NAME, "timezone": local_timezone()}),
            "creating the default site",
        )
    config = _desired_config(client, config_file, dicom_port)
    revision = _check(
        client.put(f"/api/v1/sites/{SITE_NAME}/config", json=config.model_dump(mode="json")),
        "storing the site config",
    )["revision"]
    if token_file.exists():
        return int(revision)
    agents = _check(client.get(f"/api/v1/sites/{SITE_NAME}/agents"), "listing agents")["items"]
    if any(agent["name"] == AGENT_NAME for agent in agents):
        raise AllInOneError(
            f"the agent token file {token_file} is missing but the agent is registered; "
            "restore the file from a backup, or start with a new --data-dir"
        )
    created = _check(
        client.post(
            f"/api/v1/sites/{SITE_NAME}/agents", json={"name": AGENT_NAME, "deployment": "edge"}
        ),
        "registering the agent",
    )
    write_secret(token_file, created["token"])
    return int(revision)


def _relay_agent_output(proc: subprocess.Popen[str], on_ready: Callable[[], None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(AGENT_READY_PREFIX):
            on_ready()
            continue
        sys.stdout.write(line)
        sys.stdout.flush()


def _stop(proc: subprocess.Popen[str] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_all_in_one(
    *,
    data_dir: Path,
    http_port: int,
    dicom_port: int,
    config_file: Path | None,
    admin_token: str | None,
    http_host: str,
) -> int:
    """Run the embedded default until SIGTERM/SIGINT or a child's death; return the exit status."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if config_file is not None:
        load_site_config(
            config_file.read_text(encoding="utf-8")
        )  # refuse a bad file before starting
    token = resolve_admin_token(admin_token, data_dir)
    env = {**os.environ, ADMIN_TOKEN_ENV: token}
    base_url = f"http://{'127.0.0.1' if http_host in ('0.0.0.0', '::') else http_host}:{http_port}"  # noqa: S104
    agent_dir = data_dir / "agent"
    token_file = agent_dir / "agent-token"

    stopping = threading.Event()
    ready = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    control_plane: subprocess.Popen[str] | None = None
    agent: subprocess.Popen[str] | None = None
    try:
        control_plane = _spawn(
            [
                "control-plane",
                "--db",
                f"sqlite:///{data_dir / 'control-plane.db'}",
                "--http-port",
                str(http_port),
                "--host",
                http_host,
                "--blob-dir",
                str(data_dir / "blobs"),
            ],
            env=env,
            capture=False,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        headers = {"Authorization": f"Bearer {token}"}
        with httpx2.Client(base_url=base_url, headers=headers, timeout=30.0) as client:
            _wait_for_http(client, control_plane, deadline)
            bootstrap(client, config_file=config_file, dicom_port=dicom_port, token_file=token_file)
        agent = _spawn(
            [
                "agent",
                "--control-plane",
                base_url,
                "--token-file",
                str(token_file),
                "--data-dir",
                str(agent_dir),
            ],
            env=env,
            capture=True,
        )
        threading.Thread(
            target=_relay_agent_output, args=(agent, ready.set), daemon=True, name="agent-output"
        ).start()
        while not ready.is_set():
            if stopping.is_set():
                return 0
            if agent.poll() is not None:
                raise AllInOneError(f"the agent exited with status {agent.returncode}; see above")
            if time.monotonic() > deadline:
                raise AllInOneError("the agent did not start accepting DICOM in time")
            ready.wait(0.1)
        print("ready", flush=True)
        while not stopping.is_set():
            for name, proc in (("control plane", control_plane), ("agent", agent)):
                if proc.poll() is not None:
                    print(f"the {name} exited with status {proc.returncode}; stopping", flush=True)
                    return 1
            stopping.wait(0.5)
        return 0
    except AllInOneError as exc:
        print(f"all-in-one: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        # The agent first: it finishes in-flight associations and uploads while the store is up.
        _stop(agent)
        _stop(control_plane)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
