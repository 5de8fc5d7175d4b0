"""`dicom-connector control-plane` refusing a blob URL whose bucket does not exist ends with
exit status 2 every time, never with SIGABRT.

obstore's async API completed its futures from obstore's tokio threads, and one doing so while
the interpreter finalized aborted the process (`control_plane.hierarchy.blobs` now makes
blocking calls in threads of its own). The abort came far more often with several refusals
at once than with one at a time, so the runs here go a few at once.

Real processes on free loopback ports against moto's S3 server, stopped by the test.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from control_plane.migrate import upgrade
from tests.support.cli_process import Process, control_plane_process
from tests.support.s3_server import s3_server

ROUNDS = 4
AT_ONCE = 3


def test_a_blob_url_whose_bucket_does_not_exist_exits_with_status_2_every_time(
    tmp_path: Path,
) -> None:
    database_url = f"sqlite:///{tmp_path / 'cp.db'}"
    upgrade(database_url)  # the runs then only read the schema, however many at once
    statuses: list[int] = []
    outputs: list[str] = []
    with s3_server() as s3, ExitStack() as stack:
        for _ in range(ROUNDS):
            started: list[Process] = []
            for _ in range(AT_ONCE):
                process, _url = control_plane_process(
                    database_url,
                    tmp_path,
                    "--blob-url",
                    f"s3://no-such-bucket-{s3.bucket}/connector",
                    env=s3.env,
                )
                stack.callback(process.stop)
                started.append(process)
            for process in started:
                statuses.append(process.wait_exit())
                outputs.append("".join(process.output))

    assert statuses == [2] * (ROUNDS * AT_ONCE), outputs
    for output in outputs:
        assert "cannot be used" in output
        assert "Traceback" not in output
