"""Pure logic shared by the control plane and the agent.

Site config, durations and working hours, routing grammar, upload policy, header-to-hierarchy
mapping, PHI-safe logging and telemetry helpers. Must not import web, database or DICOM
libraries (fastapi, sqlalchemy, pynetdicom, pydicom, httpx2, websockets);
tests/common/test_imports.py keeps it that way.
"""
