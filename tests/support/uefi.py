"""A UEFI VM for tests: OVMF's firmware code (read-only) and a copy of its variables, as ``-drive if=pflash``.

The firmware comes from Debian's ``ovmf`` package (tests/setup-host installs
it). Run under TCG with nothing to boot, OVMF writes its boot entries into
the variables about 3-5 s after the VM starts, then leaves them alone.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from support.waits import wait_for

OVMF = Path(os.environ.get("QMPCTL_OVMF") or "/usr/share/OVMF")
OVMF_CODE = OVMF / "OVMF_CODE_4M.fd"
OVMF_VARS = OVMF / "OVMF_VARS_4M.fd"
"""The variables' template: every UEFI VM starts from a copy of it."""
FIRMWARE_WRITES = 60.0
"""How long OVMF may take to write its variables under TCG on a loaded machine (3-5 s on a quiet one)."""
QUIET = 1.5
"""Seconds without a write after which OVMF is done with its variables (its writes come 0.3 s apart)."""


def require_ovmf() -> None:
    for path in (OVMF_CODE, OVMF_VARS):
        if not path.is_file():
            pytest.skip(f"OVMF is not installed: no {path} (run tests/setup-host)")


def uefi_args(variables: Path) -> list[str]:
    """The pflash pair of a UEFI VM; ``variables`` is made from the template when missing (kept across starts)."""
    require_ovmf()
    if not variables.exists():
        shutil.copyfile(OVMF_VARS, variables)
    return ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={variables}"]


def run_firmware_until_it_writes(vm, variables: Path) -> bytes:
    """Let a paused VM run its firmware until it has written its variables and left them alone for
    ``QUIET`` seconds, pause it again; the file's bytes then."""
    template = variables.read_bytes()
    seen = {"bytes": template, "at": time.monotonic()}

    def settled() -> bool:
        now = variables.read_bytes()
        if now != seen["bytes"]:
            seen.update(bytes=now, at=time.monotonic())
        return now != template and time.monotonic() - float(seen["at"]) >= QUIET

    with vm.check() as qmp:
        qmp.cmd("cont")
        try:
            wait_for(settled, "OVMF writing its variables", FIRMWARE_WRITES, pause=0.1)
        finally:
            qmp.cmd("stop")
    return variables.read_bytes()
