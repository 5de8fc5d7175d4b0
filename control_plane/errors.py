"""Failures the control plane reports to its callers, each with the HTTP status it maps to.

Services raise these; one handler in `control_plane.main` turns them into `{"detail": ...}`
answers, so routes never paste status codes. Messages say what was wrong and what to do, and
never repeat a DICOM value that could identify a patient. Must not import FastAPI.
"""


class ControlPlaneError(Exception):
    """Base of the failures a caller can act on."""

    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(ControlPlaneError):
    """The named group, project, site, agent or file does not exist."""

    http_status = 404


class ConflictError(ControlPlaneError):
    """Creating something that already exists."""

    http_status = 409


class RejectedUploadError(ControlPlaneError):
    """An ingest body that must not be stored (bad digest, not DICOM); resending will not help."""

    http_status = 400


class UnsupportedMediaTypeError(ControlPlaneError):
    """A batch body that is not `multipart/related; type="application/dicom"`."""

    http_status = 415


class BatchTooLargeError(ControlPlaneError):
    """A batch over the instance or byte cap; split it and send the parts again."""

    http_status = 413


class BusyError(ControlPlaneError):
    """Concurrent writers kept colliding; the caller should retry later."""

    http_status = 503


class AgentUnavailableError(ControlPlaneError):
    """The agent has no live link to this control plane, so it cannot be asked anything now."""

    http_status = 409


class NoAnswerError(ControlPlaneError):
    """The agent is connected but did not answer in time."""

    http_status = 504


class InvalidConfigError(ControlPlaneError):
    """A site config that does not validate; `problems` name each key, value and what is allowed."""

    http_status = 422

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


class MissingBlobError(ControlPlaneError):
    """The database names bytes the blob store does not have: storage was lost or moved."""

    http_status = 500


class InvalidRequestError(ControlPlaneError):
    """A request that is well-formed but asks for something impossible (e.g. a past expiry)."""

    http_status = 400
