"""End-to-end latency: last instance of a series sent → the whole series visible in the API.

Runs a real `dicom-connector all-in-one` with a short `acquisition_delay`, sends a series of
~130 KB MR instances on one association (pynetdicom), and polls `GET /api/v1/acquisitions` until
every instance is listed. The goal is at most `acquisition_delay + 2 s` for 200 instances; the
script prints the time beyond the delay for each round and the median.

    .venv/bin/python bench/latency.py [--instances 200] [--delay 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydicom import Dataset
from pydicom.uid import generate_uid

from tests.support.all_in_one import running_all_in_one
from tests.support.dicom_factory import make_instance
from tests.support.scu import send_datasets


def _series(n: int, subject: str) -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    return [
        make_instance(
            patient_id="BENCH",
            study_uid=study,
            series_uid=series,
            series_description="bench",
            study_description="bench",
            patient_comments=f"fw://bench/latency/{subject}",
            instance_number=i,
        )
        for i in range(1, n + 1)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--delay", type=float, default=5.0, help="acquisition_delay in seconds")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    config = {"timing": {"acquisition_delay": f"{args.delay:g}s"}}
    beyond: list[float] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_all_in_one(Path(tmp) / "data", config) as server,
    ):
        server.client.post("/api/v1/groups", json={"id": "bench", "label": "bench"})
        server.client.post("/api/v1/groups/bench/projects", json={"label": "latency"})
        for round_no in range(1, args.rounds + 1):
            subject = f"sub-{round_no}"
            datasets = _series(args.instances, subject)
            started = time.monotonic()
            send_datasets(server.dicom_port, datasets)
            last_sent = time.monotonic()
            while True:
                files = sum(len(a["files"]) for a in server.acquisitions(subject=subject))
                if files >= args.instances:
                    break
                time.sleep(0.05)
            landed = time.monotonic()
            extra = landed - last_sent - args.delay
            beyond.append(extra)
            print(
                f"round {round_no}: sent {args.instances} in {last_sent - started:.2f} s; "
                f"all listed {landed - last_sent:.2f} s after the last one "
                f"({extra:+.2f} s beyond acquisition_delay={args.delay:g}s)",
                flush=True,
            )
    median = statistics.median(beyond)
    verdict = "meets" if median <= 2.0 else "misses"
    print(f"median beyond the delay: {median:.2f} s ({verdict} the 2 s goal)")


if __name__ == "__main__":
    main()
