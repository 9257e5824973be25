"""Load the lab guest's launcher (tests/lab/guest.py) for fixtures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from support.qemu import QemuBuild

LAB = Path(__file__).resolve().parents[1] / "lab"


def lab_guest_module() -> ModuleType:
    """tests/lab/guest.py by path (it imports its own build.py); a plain import could find other packages."""
    name = "qmpctl_lab_guest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, LAB / "guest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def lab_guest(workdir: Path, build: QemuBuild, **kwargs: Any) -> Any:
    """A (not yet started) LabGuest on ``build``'s QEMU, with ``build``'s qemu-ga inside the guest."""
    lab = lab_guest_module()
    kernel, initrd = lab.lab_build.build(agent=build.guest_agent)
    return lab.LabGuest(workdir, kernel=kernel, initrd=initrd, qemu_binary=build.qemu, **kwargs)
