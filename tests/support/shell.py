"""Run shell code the way a user would, with ``qmpctl`` on PATH running the source tree."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from support.runner import REPO


def qmpctl_on_path(directory: Path) -> Path:
    """Write ``directory/qmpctl``, a stand-in for the installed command that runs this checkout."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "qmpctl"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m qmpctl "$@"\n')
    script.chmod(0o755)
    return directory


def shell_env(bin_dir: Path, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without qmpctl's own variables, the wrapper first on PATH, a private HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QMPCTL_", "LIBVIRT_DEFAULT_URI", "_QMPCTL"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}", HOME=str(home), PYTHONPATH=str(REPO))
    env.update(extra or {})
    return env
