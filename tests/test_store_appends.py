"""The three ways to append, and what a record asks of the action it is about: a new action,
a move only from a given state, and keeping or releasing the action's idempotency key."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from store import ActionRef, Claim, KeyOutcome, KeyTaken, Log, Record, State, StateError, StoreError


def opened(path: Path) -> Log:
    log = Log.open(path)
    log.start()
    return log


def opening(ref: ActionRef, key: str | None = None, **data: object) -> Record:
    claim = Claim(key, "payload-digest", 60) if key is not None else None
    return Record("intent", ref, State.PENDING, data, new_action=True, claim=claim)


def test_appends_soon_are_written_in_order_before_a_later_waited_for_append(tmp_path: Path) -> None:
    log = opened(tmp_path)
    try:
        for n in range(50):
            log.append_soon(opening(ActionRef(), n=n))
        last = log.append_blocking(opening(ActionRef(), n=50))
        # One writer, one queue: once the later append is durable, so is everything before it.
        assert last.seq == 51
        assert [e.data["n"] for e in log.entries()] == list(range(51))
    finally:
        log.close()
    assert Log.open(tmp_path, readonly=True).verify().checked == 51


def test_an_append_soon_that_cannot_be_written_is_logged_and_the_chain_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = opened(tmp_path)
    try:
        with caplog.at_level(logging.ERROR, logger="store"):
            log.append_soon(Record("outcome", ActionRef(7), State.COMMITTED))
            entry = asyncio.run(log.append(opening(ActionRef())))
        assert entry.seq == 1
        assert any("outcome entry was not written" in r.getMessage() for r in caplog.records)
    finally:
        log.close()
    assert Log.open(tmp_path, readonly=True).verify().ok


def test_no_way_to_append_works_without_a_running_writer(tmp_path: Path) -> None:
    opened(tmp_path).close()
    log = Log.open(tmp_path, readonly=True)
    record = opening(ActionRef())
    with pytest.raises(StoreError, match="not running"):
        log.append_blocking(record)
    with pytest.raises(StoreError, match="not running"):
        log.append_soon(record)
    with pytest.raises(StoreError, match="not running"):
        asyncio.run(log.append(record))
    with pytest.raises(StoreError, match="read-only"):
        log.start()


def test_if_state_applies_a_record_only_to_an_action_in_that_state(tmp_path: Path) -> None:
    log = opened(tmp_path)
    try:
        ref = ActionRef()
        log.append_blocking(opening(ref))
        with pytest.raises(StateError, match="applies only to in_doubt actions"):
            log.append_blocking(Record("resolution", ref, State.COMMITTED, if_state=State.IN_DOUBT))
        log.append_blocking(Record("outcome", ref, State.COMMITTED, if_state=State.PENDING))
        assert log.action(ref.id or 0)["state"] == "committed"  # type: ignore[index]
    finally:
        log.close()


def test_a_kept_key_replays_its_reply_and_a_released_key_is_free_again(tmp_path: Path) -> None:
    log = opened(tmp_path)
    try:
        kept, released = ActionRef(), ActionRef()
        log.append_blocking(opening(kept, "order-1"))
        log.append_blocking(opening(released, "order-2"))
        with pytest.raises(KeyTaken) as taken:
            log.append_blocking(opening(ActionRef(), "order-1"))
        assert taken.value.holder_id == kept.id and not taken.value.final

        reply = {"status": 201, "body": "made"}
        log.append_blocking(Record("outcome", kept, State.COMMITTED, key_outcome=KeyOutcome(True, reply)))
        log.append_blocking(Record("outcome", released, State.FAILED, key_outcome=KeyOutcome(False)))

        held = log.key("order-1")
        assert held is not None and held["final"] and held["reply"] == reply
        with pytest.raises(KeyTaken) as taken:
            log.append_blocking(opening(ActionRef(), "order-1"))
        assert taken.value.final and taken.value.reply == reply
        assert log.key("order-2") is None
        again = ActionRef()
        log.append_blocking(opening(again, "order-2"))
        assert log.key("order-2")["action"] == again.id  # type: ignore[index]
    finally:
        log.close()
    assert Log.open(tmp_path, readonly=True).verify().ok
