"""Fixtures shared by every tier: the CLI runner, real QEMU VMs, raw QMP checks."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.ci import pytest_runtest_makereport  # noqa: E402,F401 (the CI rule: no skips for missing peers)
from support.qemu import QEMU_BUILDS, SYSTEM_QEMU, QemuBuild, QemuVM  # noqa: E402
from support.runner import CliRunner  # noqa: E402


@pytest.fixture
def cli(tmp_path: Path) -> CliRunner:
    """Run qmpctl as a user would: a separate process, real stdout/stderr/exit code."""
    return CliRunner(cwd=tmp_path)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses ``qemu_build`` (``vm`` and ``vm_factory`` do) runs on each QEMU build.

    ``@pytest.mark.one_qemu`` keeps a test (or module) on the system's QEMU:
    for what does not depend on the QEMU release, or is too slow to run twice.
    """
    if "qemu_build" not in metafunc.fixturenames:
        return
    builds = (SYSTEM_QEMU,) if metafunc.definition.get_closest_marker("one_qemu") else QEMU_BUILDS
    metafunc.parametrize("qemu_build", builds, ids=[build.id for build in builds], indirect=True)


@pytest.fixture(scope="module")
def qemu_build(request: pytest.FixtureRequest) -> QemuBuild:
    """The QEMU (with its qemu-img and qemu-ga) this test runs against; module-scoped so modules can share a VM."""
    build: QemuBuild = getattr(request, "param", SYSTEM_QEMU)
    reason = build.missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return build


@pytest.fixture
def vm_factory(tmp_path: Path, qemu_build: QemuBuild) -> Iterator:
    """Start real QEMU VMs (TCG, -S, no devices but a qcow2 disk); all are killed afterwards."""
    started: list[QemuVM] = []

    def start(**kwargs: object) -> QemuVM:
        kwargs.setdefault("build", qemu_build)
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
