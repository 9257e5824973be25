"""In CI (``CI=true``) a test may not skip because a peer is missing: it fails instead.

Locally a missing QEMU, qemu-ga, libvirtd, sshd or lab guest is a skip with
the reason shown (``-ra``), so a partial machine can still run what it can.
In CI everything is installed by tests/setup-host, so such a skip can only
hide a broken set-up; this hook turns it into a failure that says so.

A skip counts as "a peer is missing" when its reason says so in the words
the suite's helpers use: ``... is not installed``, ``... cannot run here``,
``... is not running``, ``... is not available``. New helpers that skip for a
missing peer must use one of these phrases; other skips (a test that does
not apply) are left alone.
"""

from __future__ import annotations

import os
import re
from typing import Any, Generator

import pytest

MISSING_PEER = re.compile(r"\b(?:is|are) not (?:installed|running|available)\b|\bcannot run here\b", re.I)


def in_ci(environ: Any = os.environ) -> bool:
    return str(environ.get("CI", "")).strip().lower() in ("true", "1", "yes")


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        reason = _reason(report)
        if MISSING_PEER.search(reason):
            report.outcome = "failed"
            report.longrepr = (f"CI=true: this test would have been skipped because a peer is missing, which in CI "
                               f"means the set-up is broken (tests/setup-host). {reason}")
