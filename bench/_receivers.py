"""The C-STORE receivers the intake benchmark sends to, each started fresh per round.

A receiver's ``serve(workdir)`` starts it on 127.0.0.1 with free ports and its storage under
workdir, yields a Session (port, called AE title) and always stops it on the way out. After a
normal exit, ``Session.received`` holds how many instances the receiver says it kept, so a run
that lost instances is reported as a failure, never as a rate.

The harness never imports pynetdicom or dicom-connector: what the agent kept is counted by
bench/_agent_intake.py in its own process, after the agent has stopped.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from _processes import LineReader, ProcessFailed, free_port, running, spawn, wait_for_port

BENCH_DIR = Path(__file__).resolve().parent
STARTUP_TIMEOUT_SECONDS = 60.0
# Orthanc and the all-in-one flush their databases on SIGTERM; give them time before SIGKILL.
SHUTDOWN_TIMEOUT_SECONDS = 30.0


@dataclass
class Session:
    """A running receiver: where to send, and afterwards how many instances it kept."""

    port: int
    ae_title: str
    # The long-lived receiver processes (descendants are found through them), for CPU use and
    # the profiler; empty when the work happens in short-lived children.
    pids: list[int] = field(default_factory=list)
    received: int | None = None


class Receiver(Protocol):
    """Something storescu can send to; see the module docstring for the contract."""

    name: str
    description: str

    def serve(self, workdir: Path) -> contextlib.AbstractContextManager[Session]:
        """Start the receiver under workdir, yield its Session, stop it on exit."""
        ...


@dataclass
class StoreScp:
    """dcmtk storescp writing every instance to a directory, one process per association."""

    name: str = "storescp"
    description: str = "dcmtk storescp --fork (files only, no index, no fsync)"

    @contextlib.contextmanager
    def serve(self, workdir: Path) -> Iterator[Session]:
        """Start storescp on a free port writing into workdir/storescp."""
        out = workdir / "storescp"
        out.mkdir()
        port = free_port()
        argv: list[str | Path] = ["storescp", "--fork", "-aet", "STORESCP", "-od", out, str(port)]
        with running(spawn(argv, log=workdir / "storescp.log")) as proc:
            wait_for_port(port, proc, STARTUP_TIMEOUT_SECONDS)
            # No pids: its per-association children are gone before their CPU could be read.
            session = Session(port=port, ae_title="STORESCP")
            yield session
        session.received = sum(1 for path in out.iterdir() if path.is_file())


@dataclass
class Orthanc:
    """Orthanc from Debian: SQLite index and file storage, fsync per file (its default)."""

    name: str = "orthanc"
    description: str = "Orthanc (SQLite index + files, fsync per file: its default)"
    binary: str = "/usr/sbin/Orthanc"

    @contextlib.contextmanager
    def serve(self, workdir: Path) -> Iterator[Session]:
        """Start Orthanc with a generated config on free ports; wait until /system answers."""
        dicom_port, http_port = free_port(), free_port()
        config = {
            "Name": "intake-bench",
            "StorageDirectory": str(workdir / "orthanc-storage"),
            "IndexDirectory": str(workdir / "orthanc-index"),
            "DicomAet": "ORTHANC",
            "DicomPort": dicom_port,
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            # Debian's plugins (worklists, serve-folders) are not part of intake.
            "Plugins": [],
        }
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        argv: list[str | Path] = [self.binary, config_path]
        proc = spawn(argv, log=workdir / "orthanc.log", cwd=workdir)
        with running(proc, SHUTDOWN_TIMEOUT_SECONDS):
            base = f"http://127.0.0.1:{http_port}"
            _wait_for_http(f"{base}/system", proc)
            wait_for_port(dicom_port, proc, STARTUP_TIMEOUT_SECONDS)
            session = Session(port=dicom_port, ae_title="ORTHANC", pids=[proc.pid])
            yield session
            count = _get_json(f"{base}/statistics")["CountInstances"]
            if not isinstance(count, int):
                raise ProcessFailed(f"Orthanc /statistics gave CountInstances={count!r}")
            session.received = count


@dataclass
class PynetdicomFloor:
    """A pynetdicom SCP that accepts and discards (bench/_floor_scp.py)."""

    name: str = "pynetdicom-floor"
    description: str = "bare pynetdicom SCP, accepts and discards"
    dul_loop_delay: float | None = None
    max_pdu: int | None = None
    log_handlers: bool = True
    assoc_loop_delay: float | None = None
    processes: int = 1

    @contextlib.contextmanager
    def serve(self, workdir: Path) -> Iterator[Session]:
        """Start the floor SCP process(es) and collect their counts after SIGTERM."""
        argv: list[str | Path] = [sys.executable, BENCH_DIR / "_floor_scp.py"]
        if self.dul_loop_delay is not None:
            argv += ["--dul-loop-delay", str(self.dul_loop_delay)]
        if self.max_pdu is not None:
            argv += ["--max-pdu", str(self.max_pdu)]
        if not self.log_handlers:
            argv.append("--no-log-handlers")
        if self.assoc_loop_delay is not None:
            argv += ["--assoc-loop-delay", str(self.assoc_loop_delay)]
        with _ready_processes(argv, self.processes, workdir / "floor.log") as group:
            session = Session(port=group.port, ae_title="FLOOR", pids=group.pids())
            yield session
        session.received = group.reported("received")


@dataclass
class AgentIntake:
    """The agent's durable intake alone: a listener + Spool + AgentState, in _agent_intake.py."""

    name: str = "agent-intake"
    description: str = "agent lean engine + Spool + AgentState (fsync + SQLite commit per instance)"
    engine: str = "lean"
    dul_loop_delay: float | None = None
    processes: int = 1
    assoc_loop_delay: float | None = None
    # Another checkout of dicom-connector (e.g. a worktree of main): its agent code and its
    # _agent_intake.py run instead of this tree's, for a before/after in one run.
    source: Path | None = None

    @contextlib.contextmanager
    def serve(self, workdir: Path) -> Iterator[Session]:
        """Start the intake process(es) on one data directory; count the state's rows afterwards."""
        data_dir = workdir / "agent"
        bench_dir = BENCH_DIR if self.source is None else self.source / "bench"
        argv: list[str | Path] = [
            sys.executable,
            bench_dir / "_agent_intake.py",
            "--data-dir",
            data_dir,
            "--engine",
            self.engine,
        ]
        if self.dul_loop_delay is not None:
            argv += ["--dul-loop-delay", str(self.dul_loop_delay)]
        if self.assoc_loop_delay is not None:
            argv += ["--assoc-loop-delay", str(self.assoc_loop_delay)]
        env = None if self.source is None else {"PYTHONPATH": str(self.source)}
        log = workdir / "agent-intake.log"
        with _ready_processes(argv, self.processes, log, env) as group:
            session = Session(port=group.port, ae_title="CONNECTOR", pids=group.pids())
            yield session
        session.received = _count_agent_instances(data_dir)


@dataclass
class AllInOne:
    """The shipped embedded connector: ``dicom-connector all-in-one`` with a generated config."""

    name: str = "all-in-one"
    description: str = "dicom-connector all-in-one, acquisition_delay 1h (no uploads during intake)"
    acquisition_delay_seconds: int = 3600

    @contextlib.contextmanager
    def serve(self, workdir: Path) -> Iterator[Session]:
        """Start the CLI on free ports and wait for its ``ready`` line."""
        data_dir = workdir / "all-in-one"
        config_path = workdir / "site-config.json"
        timing = {"acquisition_delay": f"{self.acquisition_delay_seconds}s"}
        config_path.write_text(json.dumps({"timing": timing}))
        dicom_port, http_port = free_port(), free_port()
        argv: list[str | Path] = [
            self.executable(),
            "all-in-one",
            "--data-dir",
            data_dir,
            "--http-port",
            str(http_port),
            "--dicom-port",
            str(dicom_port),
            "--config",
            config_path,
        ]
        proc = spawn(argv, log=workdir / "all-in-one.log", capture_stdout=True)
        with running(proc, SHUTDOWN_TIMEOUT_SECONDS):
            LineReader(proc).wait_for("ready", STARTUP_TIMEOUT_SECONDS)
            session = Session(port=dicom_port, ae_title="CONNECTOR", pids=[proc.pid])
            yield session
        state_dbs = sorted(data_dir.rglob("state.db"))
        if len(state_dbs) != 1:
            raise ProcessFailed(f"expected one agent state.db under {data_dir}, found {state_dbs}")
        session.received = _count_agent_instances(state_dbs[0].parent)

    @staticmethod
    def executable() -> str:
        """The console script next to the running interpreter, else the one on PATH."""
        beside = Path(sys.executable).parent / "dicom-connector"
        if beside.exists():
            return str(beside)
        found = shutil.which("dicom-connector")
        if found is None:
            raise ProcessFailed("dicom-connector is not installed: run `make` or pip install -e .")
        return found


@dataclass
class _ProcessGroup:
    """Processes that each printed ``ready PORT`` on the same port."""

    port: int
    readers: list[LineReader] = field(default_factory=list)

    def pids(self) -> list[int]:
        """The process ids, in start order."""
        return [reader.proc.pid for reader in self.readers]

    def reported(self, prefix: str) -> int:
        """Sum the integer each stopped process printed after prefix."""
        return sum(
            int(reader.wait_for(prefix, STARTUP_TIMEOUT_SECONDS).split()[1])
            for reader in self.readers
        )


@contextlib.contextmanager
def _ready_processes(
    argv: list[str | Path], processes: int, log: Path, env: dict[str, str] | None = None
) -> Iterator[_ProcessGroup]:
    """Start processes copies of argv (sharing a port via SO_REUSEPORT when more than one)."""
    if processes > 1:
        argv = [*argv, "--reuse-port", "--port", str(free_port())]
    with contextlib.ExitStack() as stack:
        group: _ProcessGroup | None = None
        for _ in range(processes):
            proc = stack.enter_context(running(spawn(argv, log=log, env=env, capture_stdout=True)))
            reader = LineReader(proc)
            port = int(reader.wait_for("ready", STARTUP_TIMEOUT_SECONDS).split()[1])
            group = group or _ProcessGroup(port=port)
            if port != group.port:
                raise ProcessFailed(f"receiver processes bound ports {group.port} and {port}")
            group.readers.append(reader)
        assert group is not None
        yield group


def _count_agent_instances(data_dir: Path) -> int:
    # In a fresh process: the harness never imports the agent, so a run always counts with the
    # agent code the receiver ran (and an agent error cannot take the harness down).
    argv = [sys.executable, str(BENCH_DIR / "_agent_intake.py"), "--count-only", "--data-dir"]
    result = subprocess.run(
        [*argv, str(data_dir)], capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0 or not result.stdout.strip().isdigit():
        raise ProcessFailed(
            f"counting the agent's instances in {data_dir} failed: {result.stderr.strip()[-500:]}"
        )
    return int(result.stdout)


def _wait_for_http(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProcessFailed(f"{proc.args!r} exited with {proc.returncode} during start-up")
        with contextlib.suppress(OSError):
            _get_json(url)
            return
        time.sleep(0.1)
    raise ProcessFailed(f"{url} did not answer within {STARTUP_TIMEOUT_SECONDS:.0f} s")


def _get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our http URL
        body = json.load(response)
    if not isinstance(body, dict):
        raise ProcessFailed(f"{url} answered {body!r}, expected a JSON object")
    return body
