"""Upload destinations of the agent: the `Destination` protocol and its implementations."""

from agent.upload.base import Destination, UploadError, UploadResult

__all__ = ["Destination", "UploadError", "UploadResult"]
