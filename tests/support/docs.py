"""Load the documentation tooling in man/ (the README reader and the man page generator) for tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

MAN = Path(__file__).resolve().parents[2] / "man"


def man_module(name: str) -> ModuleType:
    """``man/NAME.py`` by path: ``readme`` or ``generate`` are too generic to import by name."""
    key = f"qmpctl_man_{name}"
    if key not in sys.modules:
        if str(MAN) not in sys.path:
            sys.path.insert(0, str(MAN))  # generate.py imports its sibling readme.py
        spec = importlib.util.spec_from_file_location(key, MAN / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]
