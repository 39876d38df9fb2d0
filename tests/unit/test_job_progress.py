"""jobs.progress: what a task calls while it runs; attribute stores only, never an error."""
from __future__ import annotations

import asyncio
import time

import pytest

from jobs import progress
from jobs.exceptions import JobCancelled
from jobs.progress import RunState, check_cancelled, is_cancel_requested, log, report_progress


@pytest.fixture
def state():
    state = RunState("job-1")
    token = progress.activate(state)
    yield state
    progress.deactivate(token)


def test_outside_a_worker_reporting_does_nothing_and_does_not_fail():
    report_progress(1, 2, "x")
    log("line")
    assert is_cancel_requested() is False


def test_report_progress_records_the_latest_state(state):
    report_progress(1, 10, "one")
    report_progress(2, 10, "two")
    assert (state.progress, state.dirty) == ((2, 10, "two"), True)


def test_the_worker_is_woken_once_per_write_however_often_the_task_reports(state):
    wakes = []
    state.wake = lambda: wakes.append(state.progress)
    report_progress(1, 10, "one")
    report_progress(2, 10, "two")
    log("a line")
    assert wakes == [(1, 10, "one")]
    state.dirty = False  # what the worker does before it reads and writes the state
    log("another line")
    report_progress(3, 10, "three")
    assert wakes == [(1, 10, "one"), (2, 10, "two")]


def test_a_message_of_none_keeps_the_previous_message(state):
    report_progress(1, 10, "loading")
    report_progress(2, 10)
    assert state.progress == (2, 10, "loading")


def test_numbers_given_as_strings_are_converted(state):
    report_progress("3", "4")
    assert state.progress == (3, 4, "")


def test_bad_numbers_are_ignored_without_an_error(state):
    report_progress(1, 2, "ok")
    report_progress("many", None, "bad")
    assert state.progress == (1, 2, "ok")


def test_log_lines_queue_up_in_order(state):
    log("a")
    log("b")
    assert [text for _, text in state.take_log()] == ["a", "b"]


def test_take_log_empties_the_queue(state):
    log("a")
    state.take_log()
    assert state.take_log() == []


def test_check_cancelled_raises_once_cancel_was_requested(state):
    check_cancelled()
    state.cancel_requested = True
    with pytest.raises(JobCancelled):
        check_cancelled()


def test_an_abandoned_run_reads_as_cancel_requested(state):
    state.abandoned = True
    assert is_cancel_requested() is True


def test_the_current_run_is_visible_inside_asyncio_tasks(state):
    async def reporting():
        await asyncio.sleep(0)
        report_progress(7, 8, "async")

    asyncio.run(reporting())
    assert state.progress == (7, 8, "async")


def test_a_progress_call_takes_under_10_microseconds_on_average(state):
    calls = 100_000
    start = time.perf_counter()
    for i in range(calls):
        report_progress(i, calls, "working")
    per_call = (time.perf_counter() - start) / calls
    assert per_call < 10e-6, f"{per_call * 1e6:.2f} µs per call"
