"""PULL mode: poll DICOM sources with C-FIND, retrieve complete series into the spool.

`ledger` remembers what each source showed (counts, stability, vanished series, what was
retrieved) in the agent's state database; `query` runs one C-FIND round; `retrieval` fetches a
series (whole, or only its missing instances) and checks what arrived; `poller` runs the rounds
of one source; `service` keeps one poller per configured source. From the spool on, a retrieved
series follows the PUSH path (reaper, uploader).

Must not import pynetdicom (only through `agent.dicom.scu`), HTTP libraries or control_plane.
"""
