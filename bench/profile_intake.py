"""Where a pynetdicom receiver's time goes while storescu sends it a series.

    .venv/bin/pip install py-spy      # once
    .venv/bin/python bench/profile_intake.py [--receiver agent-intake] [--instances 1000]

Starts the receiver (bench/_agent_intake.py by default, or the bare pynetdicom floor), samples it
with ``py-spy record --idle`` (wall clock, sleeping threads included) while storescu sends, and
prints per thread — the lean engine's association thread, or pynetdicom's association thread
and its DUL thread — the milliseconds per instance spent in each part of the path: loop
sleeps, socket I/O, data set scan, sha256, file write, fsyncs, waiting for a group commit, the
SQLite commit, response encoding; on the lean engine, time in no known part is shown by its
innermost function and callers. Sampling slows the receiver down a little
(the rate printed is the profiled one); compare the shares, not the absolute rate.

The harness must not import pynetdicom; it reads the sampled stacks as text.
"""

from __future__ import annotations

import argparse
import linecache
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from _instances import write_instances
from _processes import ProcessFailed
from _receivers import AgentIntake, PynetdicomFloor, Receiver, Session
from _sender import send

# "function (path/to/file.py:123)" as py-spy writes each frame of a raw stack.
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?):(?P<line>\d+)\)$")
_ATTACH_SECONDS = 1.5


def main(argv: Sequence[str] | None = None) -> int:
    """Profile one receiver and print the breakdown; return the process exit status."""
    args = _parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: run .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    receiver: Receiver = (
        AgentIntake(dul_loop_delay=args.dul_loop_delay)
        if args.receiver == "agent-intake"
        else PynetdicomFloor(dul_loop_delay=args.dul_loop_delay)
    )
    workdir = Path(tempfile.mkdtemp(prefix="intake-profile-", dir=args.workdir))
    try:
        files = write_instances(args.instances, workdir / "instances")
        for path in files:
            path.read_bytes()
        raw = workdir / "stacks.txt"
        run_dir = workdir / "run"
        run_dir.mkdir()
        with receiver.serve(run_dir) as session:
            seconds = _send_sampled(py_spy, raw, files, session, args, run_dir)
        if session.received != len(files):
            raise ProcessFailed(f"{receiver.name} kept {session.received} of {len(files)}")
        print(
            f"{receiver.name}: {len(files)} instances over {args.associations} association(s) in "
            f"{seconds:.2f} s = {len(files) / seconds:.0f} inst/s while sampled at {args.rate} Hz"
        )
        # Each association has one thread of each role, busy or waiting for the whole send.
        wall_ms = seconds * args.associations / len(files) * 1000
        print(_breakdown(raw.read_text(), wall_ms))
        if args.stacks is not None:
            shutil.copyfile(raw, args.stacks)
    except ProcessFailed as exc:
        print(f"profile failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--receiver", choices=("agent-intake", "pynetdicom-floor"), default="agent-intake"
    )
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--associations", type=int, default=1)
    parser.add_argument("--dul-loop-delay", type=float, default=None)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="parent of the temp dir (e.g. /dev/shm)"
    )
    parser.add_argument(
        "--stacks", type=Path, default=None, help="keep py-spy's raw stacks in this file"
    )
    return parser.parse_args(argv)


def _send_sampled(
    py_spy: str,
    raw: Path,
    files: Sequence[Path],
    session: Session,
    args: argparse.Namespace,
    run_dir: Path,
) -> float:
    if len(session.pids) != 1:
        raise ProcessFailed(f"expected one receiver process to sample, got {session.pids}")
    argv = [py_spy, "record", "--idle", "--nonblocking", "--format", "raw"]
    argv += ["--rate", str(args.rate), "--output", str(raw), "--pid", str(session.pids[0])]
    with (run_dir / "py-spy.log").open("w") as log:
        sampler = subprocess.Popen(argv, stdout=log, stderr=log)
        try:
            time.sleep(_ATTACH_SECONDS)  # py-spy has no "attached" signal; it attaches in ms
            seconds = send(
                files,
                port=session.port,
                called_ae=session.ae_title,
                associations=args.associations,
                log=run_dir / "storescu.log",
            )
        finally:
            # SIGINT makes py-spy write what it sampled; SIGKILL only if it hangs.
            sampler.send_signal(signal.SIGINT)
            try:
                sampler.wait(30)
            except subprocess.TimeoutExpired:
                sampler.kill()
                sampler.wait()
    if not raw.exists():
        raise ProcessFailed(f"py-spy wrote no samples; see {run_dir / 'py-spy.log'}")
    return seconds


def _breakdown(raw: str, wall_ms: float) -> str:
    """Per thread role, each category's share of the samples and of wall_ms per instance.

    Shares come from the samples; milliseconds from the measured send time, because py-spy
    drops samples when the machine is busy and sample counts would understate them.
    """
    per_role: dict[str, Counter[str]] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [match for frame in stack.split(";") if (match := _FRAME.match(frame))]
        role = _role(frames)
        if role is None:
            continue
        per_role.setdefault(role, Counter())[_category(frames, role)] += int(count)
    out = []
    for role, counter in sorted(per_role.items()):
        total = sum(counter.values())
        out.append(f"\n{role}: {wall_ms:.2f} ms per instance per association ({total} samples)")
        for category, samples in counter.most_common():
            share = samples / total
            if share >= 0.01:
                out.append(f"  {share * wall_ms:6.2f} ms  {share:5.1%}  {category}")
    return "\n".join(out)


def _role(frames: Sequence[re.Match[str]]) -> str | None:
    functions = [frame["function"] for frame in frames]
    if any(
        function.endswith("Association.serve") and "engine/association.py" in frame["path"]
        for function, frame in zip(functions, frames, strict=True)
    ):
        return "lean engine association thread (reads, stores, answers)"
    if any(function.endswith("DULServiceProvider.run_reactor") for function in functions):
        return "DUL thread (reads PDUs, sends responses)"
    if any(function.endswith("Association.run_reactor") for function in functions):
        return "association thread (DIMSE, C-STORE handler)"
    # Accept loop, signal wait in the main thread: idle by design, not on the path.
    return None


def _category(frames: Sequence[re.Match[str]], role: str) -> str:
    for frame in reversed(frames):
        function, path = frame["function"], frame["path"]
        text = _source_line(path, int(frame["line"]))
        if function.endswith("_fsync_directory"):
            return "spool: fsync directory (slot batch)"
        if function.endswith("write_durably"):
            return "spool: fsync file" if "fsync" in text else "spool: open + write slot"
        if function.endswith(("Spool.store", "Spool.write")):
            if "sha256" in text:
                return "spool: sha256"
            return "spool: other"
        if function.endswith("SlotWriter.finish") and "fsync" in text:
            return "spool: fsync file"
        if function.endswith("GroupCommit.submit") and "wait" in text:
            return "state: waiting for the group commit of others"
        if "agent/state/" in path or path.endswith("agent/state.py"):
            return "state: SQLite transaction (lock waits included)"
        if function.endswith(("Reader._fill", "Reader.read_into")) and "recv" in text:
            return "socket receive / select"
        if function.endswith(("Association._send", "Association._respond")) and "send" in text:
            return "socket send"
        if path.endswith("engine/commands.py"):
            return "command parse / response encode (direct)"
        if path.endswith("engine/incoming.py"):
            return "data set buffer (grow, copy)"
        if path.endswith("dataset_scan.py"):
            return "scan data set (no decode)"
        if path.endswith("file_meta.py"):
            return "build Part-10 header"
        if "sleep" in text and function.endswith("run_reactor"):
            return (
                "DUL loop sleep (_run_loop_delay)"
                if "dul.py" in path
                else "association reactor sleep (fixed 1 ms in pynetdicom)"
            )
        if function.endswith(("AssociationSocket.recv", "AssociationSocket.ready")):
            return "socket receive / select"
        if function.endswith("AssociationSocket.send"):
            return "socket send"
        if "pydicom/filewriter.py" in path or function.endswith("dsutils.encode"):
            return "encode response / command set (pydicom)"
        if "structlog" in path or "logging/__init__" in path:
            return "logging"
    if role.startswith("lean"):
        innermost = frames[-1]
        chain = " <- ".join(f["function"].split(".")[-1] for f in reversed(frames[-8:-1]))
        return f"other: {innermost['function']} ({Path(innermost['path']).name}) <- {chain}"
    return (
        "DUL: PDU decode, state machine, queues"
        if role.startswith("DUL")
        else "association: DIMSE decode, service class, queues"
    )


def _source_line(path: str, line: int) -> str:
    # py-spy shortens paths under site-packages ("pynetdicom/dul.py"); look them up on sys.path.
    for root in ("", *sys.path):
        candidate = Path(root) / path
        if candidate.is_file():
            return linecache.getline(str(candidate), line)
    return ""


if __name__ == "__main__":
    sys.exit(main())
