"""Static checks as tests, so README's one test command (and CI) runs them: ruff, and mypy strict on qmpctl/.

Both read their configuration from pyproject.toml ([tool.ruff], [tool.mypy]);
both tools come with the ``test`` extra. A failure prints every finding.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed (pip install '.[test]')")
    return subprocess.run([sys.executable, "-m", tool, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300, check=False)


def test_ruff_finds_nothing():
    result = _run("ruff", "check", "--no-cache", "--output-format", "concise", "qmpctl", "tests", "man")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_finds_nothing():
    result = _run("mypy", "--strict", "qmpctl")
    assert result.returncode == 0, result.stdout + result.stderr
