"""The control plane's clock: a callable answering the current UTC time.

Passed to `create_app` so that tests move time (a heartbeat going missing, history ageing)
without sleeping. Must not import FastAPI or the database layer.
"""

from collections.abc import Callable
from datetime import datetime

from control_plane.models import utc_now

Clock = Callable[[], datetime]
"""Answers the current time, timezone-aware in UTC."""

system_clock: Clock = utc_now
