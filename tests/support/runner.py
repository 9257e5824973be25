"""Run the qmpctl CLI in a child process, from the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float
    out_bytes: bytes = b""

    def __repr__(self) -> str:
        return f"Result(code={self.code}, out={self.out[:300]!r}, err={self.err[:300]!r}, {self.seconds:.2f}s)"


class CliRunner:
    """``cli("status", "-s", path)`` runs ``python -m qmpctl`` and captures everything."""

    def __init__(self, cwd: Path | None = None) -> None:
        self.cwd = cwd

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QMPCTL_", "LIBVIRT_DEFAULT_URI"))}
        env["PYTHONPATH"] = str(REPO)
        env.update(extra or {})
        return env

    def argv(self, *args: str | bytes) -> list[str | bytes]:
        return [sys.executable, "-m", "qmpctl", *args]

    def __call__(self, *args: str | bytes, input: bytes | None = None, env: dict[str, str] | None = None,
                 timeout: float = 60) -> Result:
        started = time.monotonic()
        proc = subprocess.run(self.argv(*args), input=input if input is not None else b"",
                              capture_output=True, env=self.env(env), cwd=self.cwd, timeout=timeout)
        return Result(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                      proc.stderr.decode("utf-8", "replace"), time.monotonic() - started, proc.stdout)

    def popen(self, *args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=self.env(env), cwd=self.cwd, **kwargs)

    def concurrently(self, *calls: tuple[str, ...], env: dict[str, str] | None = None,
                     timeout: float = 60) -> list[Result]:
        """Several independent qmpctl calls at once (each would wait on its own slow peer, e.g. a libguestfs
        appliance): a Result each, in the order given, once all have ended."""
        started = time.monotonic()
        children = [self.popen(*args, env=env) for args in calls]
        results = []
        try:
            for child in children:
                out, err = child.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
                results.append(Result(child.returncode, out.decode("utf-8", "replace"),
                                      err.decode("utf-8", "replace"), time.monotonic() - started, out))
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        return results
