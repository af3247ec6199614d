"""The per-partition low-water mark that decides how far an Event Hubs checkpoint may go."""

from __future__ import annotations

import pytest

from orchestrator.queues.eventhubs.low_water_mark import LowWaterMark

# received: offsets in partition order; acks: (offset acked, checkpoint it allows or None)
CASES = [
    pytest.param(["1", "2", "3"], [("1", "1"), ("2", "2"), ("3", "3")], id="in-order"),
    pytest.param(["1", "2", "3"], [("3", None), ("2", None), ("1", "3")], id="reverse"),
    pytest.param(
        ["1", "2", "3", "4"], [("2", None), ("1", "2"), ("4", None), ("3", "4")], id="pairs"
    ),
    pytest.param(["10", "20", "30"], [("20", None), ("20", None), ("10", "20")], id="double-ack"),
    pytest.param(["1", "2"], [("9", None), ("1", "1")], id="unknown-offset-ignored"),
    pytest.param(["1", "2"], [("1", "1"), ("1", None), ("2", "2")], id="ack-after-checkpoint"),
    pytest.param(["5"], [], id="nothing-acked"),
]


@pytest.mark.parametrize(("received", "acks"), CASES)
def test_checkpoint_moves_only_past_completed_prefix(
    received: list[str], acks: list[tuple[str, str | None]]
) -> None:
    mark: LowWaterMark[str] = LowWaterMark()
    for offset in received:
        mark.track(offset, offset)
    assert [mark.ack(offset) for offset, _ in acks] == [want for _, want in acks]


def test_pending_count_shrinks_with_the_prefix() -> None:
    mark: LowWaterMark[str] = LowWaterMark()
    for offset in ["1", "2", "3"]:
        mark.track(offset, offset)
    assert len(mark) == 3
    mark.ack("2")
    assert len(mark) == 3  # "1" still holds the checkpoint back
    mark.ack("1")
    assert len(mark) == 1


def test_events_received_after_an_ack_extend_the_window() -> None:
    mark: LowWaterMark[str] = LowWaterMark()
    mark.track("1", "1")
    assert mark.ack("1") == "1"
    mark.track("2", "2")
    mark.track("3", "3")
    assert mark.ack("3") is None
    assert mark.ack("2") == "3"


def test_repr_shows_the_live_state() -> None:
    mark: LowWaterMark[str] = LowWaterMark()
    mark.track("1", "a")
    mark.track("2", "b")
    mark.ack("2")
    assert repr(mark) == "<LowWaterMark tracked=2 done=1 head=1>"
