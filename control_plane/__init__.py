"""The control plane: fleet management (sites, agents, config revisions) and the hierarchy store.

Must not import `agent` or pynetdicom: the control plane only meets DICOM as opaque Part-10 bytes.
"""
