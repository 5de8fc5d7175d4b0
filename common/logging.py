"""PHI-safe structured logging: structlog over stdlib logging, with an allowlist of event keys.

Every structured log event passes `redact_unlisted_keys`: a key outside `ALLOWED_LOG_KEYS`
keeps its name but its value is printed as ``[redacted]``, so a patient name, ID or comment
passed by mistake never reaches a log line. The event message itself is printed as written:
keep it a constant sentence and put values in allowlisted keys. Correlate a series with
`series_key`, never with its UID.

Libraries that log through stdlib logging are not filtered key by key; pynetdicom, pydicom and
the HTTP clients are held at WARNING or above because their lower levels print dataset contents
or request URLs.

Imports structlog, stdlib and `common` only: never web, database or DICOM libraries.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import warnings
from collections import deque
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from common.phi import SAFE_KEYS

__all__ = [
    "ALLOWED_LOG_KEYS",
    "REDACTED",
    "RecentLogLines",
    "configure_logging",
    "redact_unlisted_keys",
    "series_key",
]

REDACTED = "[redacted]"
ALLOWED_LOG_KEYS: frozenset[str] = SAFE_KEYS | frozenset(
    {"event", "level", "logger", "timestamp", "exc_info", "exception", "stack_info", "stack"}
)
# Keys structlog's ProcessorFormatter adds for its own bookkeeping; removed before rendering.
_FORMATTER_KEYS = frozenset({"_record", "_from_structlog"})
_HANDLER_NAME = "dicom-connector"
# pynetdicom and pydicom print dataset contents below WARNING; httpx2 and httpcore2 print request
# URLs, and upload URLs carry hierarchy labels in their query string.
_CHATTY_LIBRARIES = ("pynetdicom", "pydicom", "httpx2", "httpcore2", "httpx", "httpcore")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def series_key(series_instance_uid: str) -> str:
    """A short stable key (sha256 hex, 16 characters) to correlate a series in logs and traces.

    Unsalted so that control plane and agent logs agree; it hides the UID from casual reading
    of a log, which is all a log needs.
    """
    return hashlib.sha256(series_instance_uid.encode()).hexdigest()[:16]


def redact_unlisted_keys(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """structlog processor: replace the value of every key outside `ALLOWED_LOG_KEYS`."""
    for key in event_dict:
        if key not in ALLOWED_LOG_KEYS and key not in _FORMATTER_KEYS:
            event_dict[key] = REDACTED
    if not isinstance(event_dict.get("event", ""), str):
        event_dict["event"] = REDACTED
    return event_dict


def _shared_processors() -> list[Processor]:
    """The processors every event passes, the PHI filter last."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_unlisted_keys,
    ]


def _drop_exception(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    # A traceback may quote a value; a diagnostics line keeps the event and its safe keys.
    for key in ("exc_info", "exception", "stack_info", "stack"):
        event_dict.pop(key, None)
    return event_dict


class RecentLogLines(logging.Handler):
    """The last `capacity` log lines of this process, PHI-filtered, as JSON text (for a
    diagnostics bundle). Attach with `attach()`, detach with `detach()`."""

    def __init__(self, capacity: int = 200, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._lines: deque[str] = deque(maxlen=capacity)
        self.set_name("dicom-connector-recent")
        self.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=_shared_processors(),
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    _drop_exception,
                    structlog.processors.JSONRenderer(),
                ],
            )
        )

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the formatted line (never raises: a log line must not break its caller)."""
        try:
            self._lines.append(self.format(record))
        # logging's own contract: a handler reports through handleError and never raises.
        except Exception:
            self.handleError(record)

    def lines(self) -> list[str]:
        """The kept lines, oldest first."""
        return list(self._lines)

    def attach(self) -> None:
        """Start keeping lines of the root logger."""
        logging.getLogger().addHandler(self)

    def detach(self) -> None:
        """Stop keeping lines."""
        logging.getLogger().removeHandler(self)


def configure_logging(
    level: str = "INFO", json: bool = False, stream: TextIO | None = None
) -> None:
    """Send structlog and stdlib logging to ``stream`` (default stderr) through the PHI filter.

    ``json`` renders one JSON object per line (for services); otherwise a plain key=value line
    (for people). Calling it again replaces the previous setup; handlers installed by others
    (pytest's, for example) are left alone.

    Raises:
        ValueError: for an unknown level name.
    """
    name = level.upper()
    if name not in _LEVELS:
        raise ValueError(f"{level!r} is not a log level; use one of {', '.join(_LEVELS)}")
    threshold = logging.getLevelName(name)
    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached, so structlog.testing.capture_logs and a later reconfiguration apply to
        # loggers that modules created at import time.
        cache_logger_on_first_use=False,
    )
    renderer: list[Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if json
        # A plain traceback: structlog's default (rich, when installed) prints every frame's
        # local variables, and those hold received bytes and data sets (patient values).
        else [
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    for previous in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(previous)
        previous.close()
    root.addHandler(handler)
    root.setLevel(threshold)
    for library in _CHATTY_LIBRARIES:
        logging.getLogger(library).setLevel(max(threshold, logging.WARNING))
    # pydicom's warnings about invalid values quote the value ("Invalid value for VR DA:
    # '...'"): a patient's date or name. Its errors say what failed without it.
    logging.getLogger("pydicom").setLevel(max(threshold, logging.ERROR))
    # The same sentence also goes out as a Python warning, which stderr would show as it is.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
