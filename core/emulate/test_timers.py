"""The timer thread: deadlines on an injected clock, fired in order, once.

The clock is a fake that only the test moves. The queue's own thread waits on
real time, so each test wakes it by scheduling a timer that is already due
(a new earliest deadline notifies the thread) and then waits on an event that
the last callback sets; no test sleeps.
"""
from __future__ import annotations

import threading
from typing import Callable

import pytest

from vmboot.core.emulate.timers import Timer, TimerQueue
from vmboot.tests.fakes import Clock

WAIT = 10.0  # seconds; a broken queue fails the test instead of hanging it


@pytest.fixture
def clock():
    return Clock(500.0)


@pytest.fixture
def errors():
    return []


@pytest.fixture
def queue(clock, errors):
    q = TimerQueue(clock, on_error=errors.append)
    yield q
    q.close()


def fired_event(log: list, name: str) -> tuple[threading.Event, Callable[[], None]]:
    done = threading.Event()

    def fn():
        log.append(name)
        done.set()
    return done, fn


def record(log: list, name: str):
    return lambda: log.append(name)


def without_nudges(log: list[str]) -> list[str]:
    """A nudge only wakes the thread; when it runs relative to the timers it woke does not matter."""
    return [name for name in log if name != "nudge"]


def test_a_due_timer_fires(queue, clock):
    log: list[str] = []
    done, fn = fired_event(log, "due")
    timer = queue.schedule(clock.t, fn)
    assert isinstance(timer, Timer) and timer.deadline == clock.t
    assert done.wait(WAIT)
    assert log == ["due"]


def test_timers_fire_in_deadline_order(queue, clock):
    log: list[str] = []
    queue.schedule(clock.t + 2, record(log, "b"))
    queue.schedule(clock.t + 1, record(log, "a"))
    queue.schedule(clock.t + 2, record(log, "c"))  # same deadline: first scheduled fires first
    done, last = fired_event(log, "d")
    queue.schedule(clock.t + 3, last)
    clock.t += 5
    queue.schedule(clock.t - 5, record(log, "nudge"))  # the new earliest deadline wakes the thread
    assert done.wait(WAIT)
    assert without_nudges(log) == ["a", "b", "c", "d"]


def test_a_future_timer_waits_for_the_clock(queue, clock):
    log: list[str] = []
    future, fn = fired_event(log, "future")
    queue.schedule(clock.t + 10, fn)
    done, nudge = fired_event(log, "now")
    queue.schedule(clock.t, nudge)
    assert done.wait(WAIT)
    assert log == ["now"]  # the clock has not reached the future deadline
    assert not future.is_set()

    clock.t += 10
    queue.schedule(clock.t - 10, record(log, "nudge"))
    assert future.wait(WAIT)
    assert without_nudges(log) == ["now", "future"]


def test_a_cancelled_timer_never_fires(queue, clock):
    log: list[str] = []
    timer = queue.schedule(clock.t + 5, record(log, "cancelled"))
    timer.cancel()
    assert timer.cancelled
    done, last = fired_event(log, "after")
    queue.schedule(clock.t + 6, last)
    clock.t += 10
    queue.schedule(clock.t - 10, record(log, "nudge"))
    assert done.wait(WAIT)
    assert without_nudges(log) == ["after"]


def test_a_failing_callback_is_reported_and_time_goes_on(queue, clock, errors):
    log: list[str] = []

    def broken():
        raise ValueError("boom")

    queue.schedule(clock.t, broken)
    done, after = fired_event(log, "after")
    queue.schedule(clock.t, after)
    assert done.wait(WAIT)
    assert errors == ["timer callback failed: boom"]
    assert log == ["after"]


def test_callbacks_may_schedule_more_timers(queue, clock):
    log: list[str] = []
    done, last = fired_event(log, "second")

    def first():
        log.append("first")
        queue.schedule(clock.t, last)

    queue.schedule(clock.t, first)
    assert done.wait(WAIT)
    assert log == ["first", "second"]


def test_callbacks_run_on_the_timer_thread(queue, clock):
    names: list[str] = []
    done = threading.Event()

    def fn():
        names.append(threading.current_thread().name)
        done.set()

    queue.schedule(clock.t, fn)
    assert done.wait(WAIT)
    assert names == ["timers"]


def test_close_stops_the_thread_with_timers_pending(clock):
    before = set(threading.enumerate())
    q = TimerQueue(clock)
    (thread,) = set(threading.enumerate()) - before
    q.schedule(clock.t + 3600, lambda: None)
    q.close()
    assert not thread.is_alive()
