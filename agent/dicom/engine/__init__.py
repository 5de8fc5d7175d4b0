"""The lean intake engine: one blocking loop per association on pynetdicom's codec.

`LeanListener` is its entry point (`agent.dicom.listeners.make_listener` picks it by the
agent setting `intake_engine`).
"""

from agent.dicom.engine.listener import LeanListener

__all__ = ["LeanListener"]
