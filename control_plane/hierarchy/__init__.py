"""The built-in hierarchy store: groups, projects, subjects, sessions, acquisitions and files.

Must not import FastAPI (routes call in) nor anything DICOM-network related.
"""
