"""Durations and the Prometheus textfile: parsed, rendered, carried over."""

from __future__ import annotations

import pytest

from qmpctl.backup import metrics
from qmpctl.errors import UsageError
from qmpctl.units import parse_duration


@pytest.mark.parametrize(("text", "seconds"), [("90m", 5400), ("36h", 129600), ("7d", 604800), ("1d12h", 129600),
                                               ("2w", 1209600), ("45s", 45), ("7", 7), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text, "--max-age") == seconds


@pytest.mark.parametrize("text", ["", "0d", "-1d", "7 days", "d", "1d 12x"])
def test_bad_durations_are_usage_errors(text):
    with pytest.raises(UsageError, match="--max-age"):
        parse_duration(text, "--max-age")


def test_a_failure_counts_and_keeps_the_last_success():
    result = {"disks": [{"device": "vd0", "level": "incremental", "image": "/b/x/0003-inc.qcow2", "bytes": 5,
                         "seconds": 1.5}]}
    first = metrics.apply({}, [metrics.Outcome('we"b', result, 0)], 1000.0)
    text = metrics.render(first)
    assert 'qmpctl_backup_chain_length{device="vd0",vm="we\\"b"} 3' in text
    assert "# TYPE qmpctl_backup_failures_total counter" in text
    again = metrics.apply(metrics.parse(text), [metrics.Outcome('we"b', None, 6)], 2000.0)
    assert metrics.parse(metrics.render(again)) == again
    labels = (("device", "vd0"), ("vm", 'we"b'))
    assert again[("last_success_timestamp_seconds", labels)] == "1000"
    assert again[("failures_total", (("vm", 'we"b'),))] == "1"
    assert again[("last_run_exit_code", (("vm", 'we"b'),))] == "6"
