"""The upkeep thread: jobs run at their periods, a failing job runs again, stop() joins."""

from __future__ import annotations

import threading

import pytest

from proxy.ops.upkeep import Upkeep


def test_a_job_that_raises_runs_again_and_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    upkeep = Upkeep()
    runs: list[str] = []
    again = threading.Event()

    def failing() -> None:
        runs.append("failing")
        if runs.count("failing") == 1:
            raise RuntimeError("disk on fire")
        again.set()

    upkeep.every("failing", 0.01, failing)
    upkeep.every("steady", 0.01, lambda: runs.append("steady"))
    upkeep.start()
    try:
        assert again.wait(30), "the job that failed once did not run again"
    finally:
        upkeep.stop()
    assert "steady" in runs
    assert upkeep.jobs == ["failing", "steady"]
    assert any("upkeep job failing failed" in r.getMessage() for r in caplog.records)


def test_stop_joins_the_thread_and_nothing_runs_after() -> None:
    upkeep = Upkeep()
    ran = threading.Event()
    upkeep.every("once", 0.01, ran.set)
    upkeep.start()
    assert ran.wait(30)
    upkeep.stop()
    assert upkeep._thread is None
    upkeep.stop()  # a second stop is harmless


def test_a_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="'sweep': its period must be positive"):
        Upkeep().every("sweep", 0, lambda: None)
