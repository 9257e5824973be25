"""wait_until, the one loop every wait of qmpctl goes through: its pacing, first try, and how it gives up."""

from __future__ import annotations

import itertools

import pytest

from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded, ExecTimeout
from qmpctl.wire.waiting import wait_until


class Counter:
    """A check that says "not yet" ``misses`` times, then answers."""

    def __init__(self, misses: int, answer: object = "done") -> None:
        self.calls = 0
        self.misses = misses
        self.answer = answer

    def __call__(self) -> object:
        self.calls += 1
        return self.answer if self.calls > self.misses else None


def test_without_events_it_polls_at_the_pauses_given_and_returns_the_first_answer():
    slept: list[float] = []
    check = Counter(3)
    assert wait_until(None, check, Deadline(60), "it", pauses=iter([0.001, 0.002, 0.003, 0.004]),
                      sleep=slept.append) == "done"
    assert slept == [0.001, 0.002, 0.003, 0.004] and check.calls == 4  # the first check comes after a pause


def test_check_first_tries_before_any_pause():
    slept: list[float] = []
    assert wait_until(None, Counter(0), Deadline(60), "it", check_first=True, sleep=slept.append) == "done"
    assert slept == []


def test_a_false_answer_is_an_answer_only_none_means_not_yet():
    assert wait_until(None, Counter(1, answer=False), Deadline(60), "it", pauses=itertools.repeat(0.0)) is False


def test_a_pause_never_runs_past_the_wait():
    slept: list[float] = []
    with pytest.raises(DeadlineExceeded, match="timed out after 0.05s waiting for the thing"):
        wait_until(None, Counter(10 ** 9), Deadline(0.05), "the thing", pauses=itertools.repeat(30.0),
                   sleep=lambda seconds: (slept.append(seconds), __import__("time").sleep(seconds)))
    assert slept and max(slept) <= 0.05


def test_the_wait_running_out_raises_what_timeout_builds():
    def late() -> ExecTimeout:
        return ExecTimeout("still running")

    with pytest.raises(ExecTimeout, match="still running"):
        wait_until(None, Counter(10 ** 9), Deadline(0.02), "it", pauses=itertools.repeat(0.005), timeout=late)
