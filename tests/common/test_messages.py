"""The wire protocol: every message survives encode → parse, and no frame makes parsing crash."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.config import ConfigError, SiteConfig
from common.messages import (
    HELLO_VERSION,
    PROTOCOL_VERSION,
    Command,
    CommandResult,
    ConfigMessage,
    ConfigResult,
    Error,
    ErrorCode,
    Health,
    HealthReport,
    Hello,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Welcome,
    encode_message,
    negotiate_version,
    parse_message,
)

REPORT = HealthReport(
    listener_ok=True,
    uploads_open=False,
    last_query_duration_s=12.5,
    longest_reap_s=None,
    spool_depth=4,
    spool_bytes=2_000_000,
    deferred_uploads=4,
    failed_instances=0,
    uploads_succeeded=10,
    uploads_failed=1,
    oldest_unuploaded_age_s=3600.0,
    disk_free_bytes=10**10,
    disk_total_bytes=10**11,
    disk_reserve_bytes=10**9,
    last_error="upload target answered 503",
    last_error_at=dt.datetime(2026, 11, 28, 3, 0, tzinfo=dt.UTC),
)
EVERY_MESSAGE: list[Message] = [
    Hello(agent_id=uuid.uuid4(), agent_version="0.1.0", applied_revision=3, protocol_versions=[1]),
    Hello(agent_id=None, agent_version="0.1.0", applied_revision=None, protocol_versions=[1, 2]),
    Welcome(protocol_version=1, heartbeat_interval_s=10, agent_id=uuid.uuid4(), site="hospital-a"),
    ConfigMessage.of(4, "hospital-a", "Europe/Berlin", SiteConfig(), "s" * 64),
    ConfigResult(revision=4, status="applied"),
    ConfigResult(revision=5, status="failed", reason="port 104 is privileged"),
    Health(report=REPORT),
    Command(id=uuid.uuid4(), name="report_health", args={"now": True}),
    CommandResult(id=uuid.uuid4(), ok=False, detail="unknown command"),
    Ping(nonce="n-1"),
    Pong(nonce="n-1"),
    Error(code=ErrorCode.unknown_type, message="unknown message type 'x'"),
]


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda message: message.type)
def test_every_message_survives_encoding_and_parsing(message: Message) -> None:
    assert parse_message(encode_message(message)) == message


def test_every_frame_names_its_type_and_protocol_version() -> None:
    for message in EVERY_MESSAGE:
        frame = json.loads(encode_message(message))
        assert frame["type"] == message.type
        assert frame["v"] == PROTOCOL_VERSION


def test_hello_is_always_written_in_the_first_version() -> None:
    hello = Hello(agent_id=None, agent_version="2", applied_revision=None, protocol_versions=[1])

    assert json.loads(encode_message(hello))["v"] == HELLO_VERSION == 1


def test_parsing_bytes_is_the_same_as_parsing_text() -> None:
    frame = encode_message(Ping(nonce="abc"))

    assert parse_message(frame.encode()) == parse_message(frame)


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        ("", ErrorCode.malformed, "not UTF-8 JSON"),
        ("{", ErrorCode.malformed, "not UTF-8 JSON"),
        (b"\xff\xfe", ErrorCode.malformed, "not UTF-8 JSON"),
        ("[1, 2]", ErrorCode.malformed, "got an array"),
        ('"hello"', ErrorCode.malformed, "got a string"),
        ('{"type": "ping", "nonce": "a"}', ErrorCode.unsupported_version, "no protocol version"),
        ('{"v": 2, "type": "ping", "nonce": "a"}', ErrorCode.unsupported_version, "version 2"),
        ('{"v": "1", "type": "ping", "nonce": "a"}', ErrorCode.unsupported_version, "'1'"),
        ('{"v": true, "type": "ping", "nonce": "a"}', ErrorCode.unsupported_version, "True"),
        ('{"v": 1, "type": "teleport"}', ErrorCode.unknown_type, "'teleport'"),
        ('{"v": 1}', ErrorCode.unknown_type, "None"),
        ('{"v": 1, "type": "ping"}', ErrorCode.invalid_message, "nonce: Field required"),
        ('{"v": 1, "type": "ping", "nonce": "a", "x": 1}', ErrorCode.invalid_message, "x: Extra"),
        (
            '{"v": 1, "type": "config_result", "revision": 2, "status": "failed"}',
            ErrorCode.invalid_message,
            "needs a reason",
        ),
        (
            '{"v": 1, "type": "config_result", "revision": -1, "status": "applied"}',
            ErrorCode.invalid_message,
            "revision",
        ),
    ],
)
def test_unusable_frame_raises_a_protocol_error_saying_why(
    frame: str | bytes, code: ErrorCode, words: str
) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_message(frame)

    assert raised.value.code is code
    assert words in raised.value.message
    assert raised.value.as_message() == Error(code=code, message=raised.value.message)


def test_invalid_values_are_not_echoed_in_the_error() -> None:
    frame = json.dumps({"v": 1, "type": "health", "report": {"last_error": "DOE^JANE" * 300}})

    with pytest.raises(ProtocolError) as raised:
        parse_message(frame)

    assert "DOE^JANE" not in raised.value.message


def test_deeply_nested_frame_is_a_protocol_error() -> None:
    frame = '{"v": 1, "type": "command", "args": ' + "[" * 100_000 + "]" * 100_000 + "}"

    with pytest.raises(ProtocolError) as raised:
        parse_message(frame)

    assert raised.value.code in {ErrorCode.malformed, ErrorCode.invalid_message}


@given(st.text() | st.binary())
def test_no_text_makes_parsing_raise_anything_but_a_protocol_error(frame: str | bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_message(frame)


@given(
    st.dictionaries(
        st.sampled_from(["v", "type", "nonce", "report", "id", "revision", "status", "reason"]),
        st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.just("ping"),
    )
)
def test_no_json_object_makes_parsing_raise_anything_but_a_protocol_error(
    document: dict[str, object],
) -> None:
    with contextlib.suppress(ProtocolError):
        parse_message(json.dumps(document))


def test_config_message_carries_the_config_as_json_and_validates_on_demand() -> None:
    message = ConfigMessage.of(
        2, "site", "UTC", SiteConfig.model_validate({"mode": "push"}), "s" * 64
    )

    assert message.config["dicom"]["ae_title"] == "CONNECTOR"
    assert message.site_config() == SiteConfig()


def test_config_the_agent_cannot_use_still_parses_and_names_its_problems() -> None:
    frame = json.dumps(
        {
            "v": 1,
            "type": "config",
            "revision": 7,
            "site": "s",
            "timezone": "UTC",
            "config": {"dicom": {"port": 70000}},
            "deid_salt": "s" * 64,
        }
    )

    message = parse_message(frame)

    assert isinstance(message, ConfigMessage)
    with pytest.raises(ConfigError) as invalid:
        message.site_config()
    assert any("dicom.port" in problem for problem in invalid.value.problems)


@pytest.mark.parametrize(("offered", "chosen"), [([1], 1), ([1, 2, 3], 1), ([2], None), ([], None)])
def test_negotiation_picks_the_highest_shared_version(
    offered: list[int], chosen: int | None
) -> None:
    assert negotiate_version(offered) == chosen
