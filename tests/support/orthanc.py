"""A real Orthanc (Debian's `/usr/sbin/Orthanc`) as the PACS of pull tests and benchmarks.

`running_orthanc(workdir)` starts Orthanc with a generated config on free 127.0.0.1 ports and
a storage directory of its own, with TCP_NODELAY=1, waits until its REST API answers and always
kills it. The `Orthanc` object arranges data through the REST API (`POST /instances`,
`DELETE /series/{id}`, `PUT /modalities/{name}`) and counts the retrievals it served.

Orthanc 1.10 keeps no count of C-MOVE or C-GET requests (its `/changes` list only stored and
deleted resources, `/exports` stays empty for C-MOVE, the metrics hold only the duration of the
last one), so the count comes from its log: started with `--verbose`, it writes one
"Incoming Move request" (or "Incoming Get request") line per request when it accepts one.

`Orthanc(workdir, dicomweb=True)` loads Debian's DICOMweb plugin (package orthanc-dicomweb)
and serves STOW-RS at `dicomweb_url`; `lua_script` installs Lua callbacks, such as a
`ReceivedInstanceFilter` that refuses some instances.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
from pydicom import Dataset

from tests.support.dicom_factory import encode_part10
from tests.support.environment import free_port, require_executable, require_file, tool_env

ORTHANC_AE_TITLE = "ORTHANC"
# Where Debian's orthanc-dicomweb package installs the plugin (`dpkg -L orthanc-dicomweb`).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_MOVE_LINE = "Incoming Move request from AET"
_GET_LINE = "Incoming Get request from AET"
_FIND_LINE = "Incoming Find request from AET"


class Orthanc:
    """One Orthanc server; `start` and `stop` it (both idempotent), or use `running_orthanc`.

    A stopped server keeps its ports, storage and index, so `start` again brings the same PACS
    back (a source that went away and returned).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        dicomweb: bool = False,
        lua_script: str | None = None,
        verbose: bool = True,
    ) -> None:
        """`verbose=False` drops the per-request log lines (for benchmarks): the retrieval
        counts (`move_requests`...) then stay at 0."""
        self.workdir = workdir
        self._verbose = verbose
        self._dicomweb = dicomweb
        self._lua_script = lua_script
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.ae_title = ORTHANC_AE_TITLE
        self.log_path = workdir / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.client = httpx2.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=60)

    def start(self) -> None:
        """Start Orthanc (if it is not running) and wait until REST and DICOM answer."""
        if self._proc is not None:
            return
        executable = require_executable("Orthanc")
        if self._dicomweb:
            require_file(DICOMWEB_PLUGIN, "orthanc-dicomweb")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self._config(), indent=2), encoding="utf-8")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [executable, *(["--verbose"] if self._verbose else []), str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=tool_env(),
                cwd=self.workdir,
                start_new_session=True,
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill Orthanc and wait for it to exit. Idempotent.

        SIGKILL, not SIGTERM: a graceful stop of Orthanc 1.10 takes about 3.5 s (its HTTP and
        DICOM servers poll for the stop), and a killed Orthanc loses nothing it committed to
        its SQLite index, so `start` brings back the same PACS.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT_S)

    def close(self) -> None:
        """Stop the server and close the REST client."""
        self.stop()
        self.client.close()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return None if self._proc is None else self._proc.pid

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb base URL (STOW-RS posts to `{dicomweb_url}/studies`)."""
        return f"http://127.0.0.1:{self.http_port}{DICOMWEB_ROOT}"

    def instance_count(self) -> int:
        """How many instances Orthanc holds."""
        return int(self.statistics()["CountInstances"])

    def holds_instance(self, sop_instance_uid: str) -> bool:
        """Whether Orthanc holds an instance with this SOP Instance UID."""
        response = self.client.post("/tools/lookup", content=sop_instance_uid)
        response.raise_for_status()
        return any(match["Type"] == "Instance" for match in response.json())

    @property
    def running(self) -> bool:
        """Whether the server process is up."""
        return self._proc is not None and self._proc.poll() is None

    def upload(self, datasets: Iterable[Dataset]) -> None:
        """Store each data set in Orthanc through `POST /instances`."""
        for ds in datasets:
            response = self.client.post("/instances", content=encode_part10(ds))
            response.raise_for_status()
            status = response.json()["Status"]
            if status not in ("Success", "AlreadyStored"):
                raise AssertionError(f"Orthanc did not store an instance: {status}")

    def delete_series(self, series_instance_uid: str) -> None:
        """Remove a series (`DELETE /series/{id}`), found by its UID."""
        self.client.delete(f"/series/{self._orthanc_id('Series', series_instance_uid)}")

    def register_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Make a DICOM node known to Orthanc as a C-MOVE destination (`PUT /modalities`)."""
        response = self.client.put(
            f"/modalities/{name}",
            json={
                "AET": ae_title,
                "Host": host,
                "Port": port,
                "AllowEcho": True,
                "AllowFind": True,
                "AllowMove": True,
                "AllowGet": True,
                "AllowStore": True,
            },
        )
        response.raise_for_status()

    def statistics(self) -> dict[str, Any]:
        """`GET /statistics` (counts of patients, studies, series, instances)."""
        response = self.client.get("/statistics")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def move_requests(self) -> int:
        """C-MOVE requests Orthanc accepted since it was first started in this workdir."""
        return self._count(_MOVE_LINE)

    def get_requests(self) -> int:
        """C-GET requests Orthanc accepted since it was first started in this workdir."""
        return self._count(_GET_LINE)

    def find_requests(self) -> int:
        """C-FIND requests Orthanc accepted since it was first started in this workdir."""
        return self._count(_FIND_LINE)

    def _count(self, marker: str) -> int:
        if not self.log_path.exists():
            return 0
        with self.log_path.open("r", encoding="utf-8", errors="replace") as log:
            return sum(1 for line in log if marker in line)

    def _orthanc_id(self, level: str, uid: str) -> str:
        response = self.client.post("/tools/lookup", content=uid)
        response.raise_for_status()
        for match in response.json():
            if match["Type"] == level:
                return str(match["ID"])
        raise AssertionError(f"Orthanc holds no {level.lower()} with the UID that was given")

    def _config(self) -> dict[str, Any]:
        config = self._base_config()
        if self._dicomweb:
            config["Plugins"] = [str(DICOMWEB_PLUGIN)]
            config["DicomWeb"] = {"Enable": True, "Root": f"{DICOMWEB_ROOT}/"}
        if self._lua_script is not None:
            script = self.workdir / "callbacks.lua"
            script.write_text(self._lua_script, encoding="utf-8")
            config["LuaScripts"] = [str(script)]
        return config

    def _base_config(self) -> dict[str, Any]:
        return {
            "Name": "pull-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            # Queries and C-GET from any AE title; C-MOVE destinations still have to be
            # registered (register_modality), as on a real PACS.
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            # Modalities registered over REST survive a restart (a PACS that comes back).
            "DicomModalitiesInDatabase": True,
            # A C-MOVE answers only once every instance was sent: the agent verifies then.
            "SynchronousCMove": True,
            # Close the store association of a C-MOVE at once, so a test's own SCP is not
            # kept waiting for it when it stops.
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 30,
            # Debian's plugins (worklists, serve-folders) are not part of these tests.
            "Plugins": [],
            "SaveJobs": False,
        }

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited while starting; log:\n{self._log_tail()}")
            try:
                if self.client.get("/system").status_code == 200 and self._dicom_port_open():
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(
            f"Orthanc did not start within {STARTUP_TIMEOUT_S} s:\n{self._log_tail()}"
        )

    def _dicom_port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def running_orthanc(
    workdir: Path, *, dicomweb: bool = False, lua_script: str | None = None
) -> Iterator[Orthanc]:
    """An Orthanc that is stopped however the block ends."""
    server = Orthanc(workdir, dicomweb=dicomweb, lua_script=lua_script)
    try:
        server.start()
        yield server
    finally:
        server.close()
