"""Scanner stand-ins: pynetdicom and dcmtk `storescu` sending to a port on 127.0.0.1."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom import Dataset
from pynetdicom import AE

from agent.dicom.pynetdicom_adapter import park_reactor
from tests.support.environment import require_executable, tool_env


def send_datasets(
    port: int,
    datasets: Sequence[Dataset],
    *,
    called_ae: str = "CONNECTOR",
    calling_ae: str = "TEST_SCU",
    on_status: Callable[[Dataset, int], None] | None = None,
    timeout: float = 30.0,
) -> list[int]:
    """Send `datasets` on one association as `calling_ae`; return the C-STORE status of each
    (-1 if none).

    `timeout` bounds each wait for the peer (association, DIMSE response, network idle).
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    contexts = {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError(f"association to port {port} was not established")
    # Else pynetdicom's reactor may take a C-STORE response now and then and the send waits
    # for `timeout` (pynetdicom issue #875; seen failing the kill -9 test on a loaded machine).
    park_reactor(assoc)
    statuses: list[int] = []
    try:
        for ds in datasets:
            response = assoc.send_c_store(ds)
            status = int(response.Status) if "Status" in response else -1
            statuses.append(status)
            if on_status is not None:
                on_status(ds, status)
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    called_ae: str = "CONNECTOR",
    calling_ae: str = "STORESCU",
) -> None:
    """Send files with dcmtk's storescu on one association as `calling_ae`; raise if it
    reports a failure."""
    exe = require_executable("storescu")
    result = subprocess.run(
        [exe, "-aec", called_ae, "-aet", calling_ae, "127.0.0.1", str(port), *map(str, files)],
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"storescu failed ({result.returncode}): {result.stderr}")
