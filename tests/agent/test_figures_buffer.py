"""The buffer of series figures waiting for the link: order, give-back, capacity."""

from __future__ import annotations

import datetime as dt

from agent.figures import FiguresBuffer
from common.messages import SeriesFigures

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _figures(number: int) -> SeriesFigures:
    return SeriesFigures(
        series_key=f"{number:016x}",
        routing_reason="routed",
        instances_received=1,
        instances_stored=1,
        instances_failed=0,
        instances_retrying=0,
        bytes_uploaded=10,
        last_received_at=T0,
        stored_at=T0,
    )


def test_figures_not_sent_go_back_in_front_in_their_order() -> None:
    buffer = FiguresBuffer()
    for number in range(5):
        buffer.add(_figures(number))

    taken = buffer.take(limit=3)
    buffer.add(_figures(5))
    buffer.give_back(taken)

    assert [f.series_key[-1] for f in buffer.take()] == ["0", "1", "2", "3", "4", "5"]


def test_a_full_buffer_drops_the_oldest_and_counts_them() -> None:
    buffer = FiguresBuffer(capacity=3)
    for number in range(5):
        buffer.add(_figures(number))

    assert [f.series_key[-1] for f in buffer.take()] == ["2", "3", "4"]
    assert buffer.dropped == 2
