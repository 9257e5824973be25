"""The registry of ssh children: nothing a fleet thread is starting outlives qmpctl's exit."""

from __future__ import annotations

import subprocess
import threading

import pytest

from qmpctl.wire import ssh


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(ssh, "_children", set())
    monkeypatch.setattr(ssh, "_closing", threading.Event())
    yield


def test_exit_waits_for_a_child_a_fleet_thread_is_starting_and_kills_it(fresh_registry, monkeypatch):
    # A fleet thread forks ssh (the child runs) while the main thread, interrupted, closes everything: the
    # child must be killed and reaped before the exit goes on, not left running once Popen returns.
    started, release = threading.Event(), threading.Event()
    real_popen = subprocess.Popen
    children = []

    def slow_popen(argv, **kwargs):
        child = real_popen(["sleep", "60"], **kwargs)
        children.append(child)
        started.set()
        release.wait(10)  # Popen has forked, and not yet returned to _spawn
        return child

    monkeypatch.setattr(subprocess, "Popen", slow_popen)
    outcome: list[BaseException] = []

    def fleet_thread():
        try:
            ssh._spawn(["ssh", "host"])
        except BaseException as exc:  # noqa: BLE001 (the test reads it)
            outcome.append(exc)

    thread = threading.Thread(target=fleet_thread, daemon=True)
    thread.start()
    assert started.wait(10)
    closing = threading.Thread(target=ssh._close_all, daemon=True)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive(), "close_all returned while a child was still being started"
    release.set()
    closing.join(10)
    thread.join(10)
    assert not closing.is_alive()
    assert children[0].poll() is not None, "the child outlived close_all"
    assert not ssh._children
