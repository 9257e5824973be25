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


def guest_sh(cli: Any, guest: Any, script: str, *, wait_timeout: float | None = None) -> str:
    """``sh -c SCRIPT`` in a booted lab guest through ``qmpctl agent exec``; its output, once it exited 0.

    ``wait_timeout``: for scripts that take long (syncing a filesystem under TCG); the test's own
    limit on qmpctl is half a minute more.
    """
    wait = ["--wait-timeout", f"{wait_timeout:g}"] if wait_timeout is not None else []
    limit = {"timeout": wait_timeout + 30} if wait_timeout is not None else {}
    result = cli("agent", "exec", "-a", str(guest.agent_path), *wait, "--", "sh", "-c", script, **limit)
    assert result.code == 0, result
    return result.out
