"""Fixtures shared by every tier: the CLI runner, real QEMU VMs, raw QMP checks."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.ci import pytest_runtest_makereport  # noqa: E402,F401 (the CI rule: no skips for missing peers)
from support.qemu import QemuVM  # noqa: E402
from support.runner import CliRunner  # noqa: E402


@pytest.fixture
def cli(tmp_path: Path) -> CliRunner:
    """Run qmpctl as a user would: a separate process, real stdout/stderr/exit code."""
    return CliRunner(cwd=tmp_path)


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (run tests/setup-host)")


@pytest.fixture
def vm_factory(tmp_path: Path) -> Iterator:
    """Start real QEMU VMs (TCG, -S, no devices but a qcow2 disk); all are killed afterwards."""
    _need("qemu-system-x86_64")
    started: list[QemuVM] = []

    def start(**kwargs: object) -> QemuVM:
        vm = QemuVM(tmp_path / f"vm{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(vm)
        vm.start()
        return vm

    yield start
    for vm in started:
        vm.kill()


@pytest.fixture
def vm(vm_factory) -> QemuVM:
    """One real QEMU with QMP on a unix socket and on a loopback TCP port."""
    return vm_factory(tcp=True)
