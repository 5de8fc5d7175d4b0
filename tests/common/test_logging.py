"""PHI-safe logging: only allowlisted keys print their values, whatever the log path."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pydicom
import pytest
import structlog

from common.logging import ALLOWED_LOG_KEYS, REDACTED, configure_logging, series_key

PATIENT_VALUES = {
    "patient_name": "Doe^Jane",
    "patient_id": "PID-77431",
    "comment": "fw://neuro/secret-study",
    "study_description": "Brain tumour follow-up",
    "patient_birth_date": "19700101",
}


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Route logging into a buffer; restore the previous logging setup afterwards."""
    root = logging.getLogger()
    previous_handlers = list(root.handlers)
    previous_level = root.level
    library_levels = {name: logging.getLogger(name).level for name in ("pynetdicom", "pydicom")}
    buffer = io.StringIO()
    try:
        yield buffer
    finally:
        for handler in [h for h in root.handlers if h not in previous_handlers]:
            root.removeHandler(handler)
        root.setLevel(previous_level)
        for name, level in library_levels.items():
            logging.getLogger(name).setLevel(level)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


def json_lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def assert_no_patient_value(text: str) -> None:
    for value in PATIENT_VALUES.values():
        assert value not in text


def test_a_json_log_line_redacts_patient_keys_and_keeps_allowlisted_ones(
    stream: io.StringIO,
) -> None:
    configure_logging(json=True, stream=stream)
    structlog.get_logger("intake").info(
        "instance stored", series_key=series_key("1.2.3"), count=3, **PATIENT_VALUES
    )
    assert_no_patient_value(stream.getvalue())
    (line,) = json_lines(stream)
    assert line["event"] == "instance stored"
    assert line["count"] == 3
    assert line["series_key"] == series_key("1.2.3")
    assert line["level"] == "info"
    assert line["logger"] == "intake"
    assert "timestamp" in line
    for key in PATIENT_VALUES:
        assert line[key] == REDACTED


def test_a_console_log_line_redacts_patient_keys(stream: io.StringIO) -> None:
    configure_logging(stream=stream)
    structlog.get_logger("intake").warning(
        "routing failed", reason="invalid_label", **PATIENT_VALUES
    )
    text = stream.getvalue()
    assert_no_patient_value(text)
    assert "routing failed" in text
    assert "reason=invalid_label" in text
    assert f"patient_name={REDACTED}" in text


def test_bound_and_context_values_are_redacted_too(stream: io.StringIO) -> None:
    configure_logging(json=True, stream=stream)
    structlog.contextvars.bind_contextvars(patient_id="PID-77431", site="default")
    log = structlog.get_logger("reaper").bind(patient_name="Doe^Jane", attempt=2)
    log.info("reaping")
    assert_no_patient_value(stream.getvalue())
    (line,) = json_lines(stream)
    assert (line["site"], line["attempt"]) == ("default", 2)
    assert (line["patient_id"], line["patient_name"]) == (REDACTED, REDACTED)


def test_an_event_that_is_not_text_is_redacted(stream: io.StringIO) -> None:
    configure_logging(json=True, stream=stream)
    structlog.get_logger().info({"patient_name": "Doe^Jane"})
    assert_no_patient_value(stream.getvalue())


def test_exceptions_are_rendered_with_their_traceback(stream: io.StringIO) -> None:
    configure_logging(json=True, stream=stream)
    try:
        raise RuntimeError("disk full")
    except RuntimeError:
        structlog.get_logger().exception("spool write failed", error="RuntimeError")
    (line,) = json_lines(stream)
    assert "RuntimeError: disk full" in str(line["exception"])


@pytest.mark.parametrize("json_lines_wanted", [False, True], ids=["console", "json"])
def test_a_traceback_never_shows_the_local_variables_of_its_frames(
    stream: io.StringIO, json_lines_wanted: bool
) -> None:
    # Frames of the DICOM intake hold received bytes and data sets; a traceback renderer that
    # prints locals (structlog's default with rich installed) would put them in the log.
    configure_logging(json=json_lines_wanted, stream=stream)

    def store(dataset: pydicom.Dataset) -> None:
        received = b"PID-77431"  # noqa: F841 - a local a locals-printing traceback would show
        raise ValueError("the data set cannot be stored")

    dataset = pydicom.Dataset()
    dataset.PatientName = PATIENT_VALUES["patient_name"]
    try:
        store(dataset)
    except ValueError:
        structlog.get_logger().exception("c-store failed", error="ValueError")
        logging.getLogger("pynetdicom.fsm").error("action failed", exc_info=True)

    text = stream.getvalue()
    assert "the data set cannot be stored" in text
    assert text.count("Traceback") == 2
    assert_no_patient_value(text)


def test_stdlib_records_go_through_the_same_handler(stream: io.StringIO) -> None:
    configure_logging(json=True, stream=stream)
    logging.getLogger("third.party").warning("listening on %s", 8080)
    (line,) = json_lines(stream)
    assert (line["event"], line["logger"], line["level"]) == (
        "listening on 8080",
        "third.party",
        "warning",
    )


def test_dicom_libraries_are_held_at_warning_because_they_print_datasets(
    stream: io.StringIO,
) -> None:
    configure_logging(level="DEBUG", json=True, stream=stream)
    logging.getLogger("pynetdicom.assoc").info("(0010,0010) PN [Doe^Jane]")
    logging.getLogger("pydicom").debug("PatientName Doe^Jane")
    structlog.get_logger("agent").debug("debug is on")
    assert_no_patient_value(stream.getvalue())
    assert [line["event"] for line in json_lines(stream)] == ["debug is on"]


def test_pydicom_warnings_about_invalid_values_are_held_back_because_they_quote_them(
    stream: io.StringIO,
) -> None:
    configure_logging(level="DEBUG", json=True, stream=stream)
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):
        pydicom.Dataset().PatientBirthDate = "Doe^Jane"
    assert_no_patient_value(stream.getvalue())


def test_events_below_the_level_are_dropped(stream: io.StringIO) -> None:
    configure_logging(level="warning", json=True, stream=stream)
    structlog.get_logger().info("quiet")
    structlog.get_logger().warning("loud")
    assert [line["event"] for line in json_lines(stream)] == ["loud"]


def test_configuring_twice_replaces_the_handler_instead_of_doubling_lines(
    stream: io.StringIO,
) -> None:
    configure_logging(json=True, stream=io.StringIO())
    configure_logging(json=True, stream=stream)
    structlog.get_logger().info("once")
    assert len(json_lines(stream)) == 1


def test_an_unknown_level_is_refused_with_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        configure_logging(level="verbose")


def test_series_key_is_a_stable_short_hash_that_hides_the_uid() -> None:
    uid = "1.2.826.0.1.3680043.10.1.7"
    key = series_key(uid)
    assert key == series_key(uid)
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert key != series_key(uid + "1")
    assert uid not in key


def test_the_allowlist_holds_no_patient_key() -> None:
    assert not ALLOWED_LOG_KEYS & set(PATIENT_VALUES)
    assert not ALLOWED_LOG_KEYS & {"series_instance_uid", "sop_instance_uid", "routing_string"}
