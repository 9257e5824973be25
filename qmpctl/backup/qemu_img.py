"""qemu-img as a bounded subprocess: create chain images, check, inspect and convert them offline.

Every run is bounded by a :class:`Deadline`; an interrupt kills the child
(``subprocess.run`` does that on any exception), so no qemu-img outlives qmpctl.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess

from qmpctl.deadline import Deadline
from qmpctl.errors import JobFailed, UsageError
from qmpctl.vm.jobs import JobState
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Callable, Optional

PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
PROGRESS_SCALE = 10000
"""Percent with two decimals, as qemu-img -p prints it, in whole units for a JobState."""

QEMU_IMG_MISSING = "qemu-img is not installed (it comes with QEMU's tools, e.g. the qemu-utils package)"


def run(arguments: list[str], deadline: Deadline, what: str, *, cwd: Optional[str] = None,
        check: bool = True, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``qemu-img ARGUMENTS``; a non-zero exit is :class:`JobFailed` carrying its message when ``check``."""
    try:
        done = subprocess.run(["qemu-img", *arguments], capture_output=True, text=True, cwd=cwd,
                              stdin=subprocess.DEVNULL, timeout=deadline.remaining(what), pass_fds=pass_fds)
    except FileNotFoundError:
        raise UsageError(QEMU_IMG_MISSING) from None
    except subprocess.TimeoutExpired:
        raise deadline.exceeded(what) from None
    if check and done.returncode != 0:
        raise JobFailed(f"{what} failed: qemu-img said: {(done.stderr or done.stdout).strip()}")
    return done


def by_descriptor(descriptor: int) -> str:
    """The file open at ``descriptor``, for a qemu-img that inherits it: the file itself, not a name that
    could be a link by the time qemu-img opens it."""
    return f"/dev/fd/{descriptor}"


def create(path: str, size: int, deadline: Deadline, backing: Optional[str] = None, *,
           descriptor: Optional[int] = None) -> None:
    """A new qcow2 image at ``path``, which the caller has just created empty and owns.

    ``backing`` is a path relative to the image's folder, so the chain can be
    moved as a folder. With ``descriptor`` (the new file, open), qemu-img
    writes through it, never through the name, and records the backing file
    without opening it (``-u``: the size is given).
    """
    arguments = ["create", "-q", "-f", "qcow2"]
    if backing is not None:
        arguments += ["-b", backing, "-F", "qcow2"] + (["-u"] if descriptor is not None else [])
    if descriptor is not None:
        run(arguments + [by_descriptor(descriptor), str(size)], deadline, f"creating {path}",
            pass_fds=(descriptor,))
        return
    run(arguments + [os.path.basename(path), str(size)], deadline, f"creating {path}", cwd=os.path.dirname(path))


def info(path: str, deadline: Deadline) -> dict[str, Any]:
    done = run(["info", "-f", "qcow2", "--output", "json", path], deadline, f"reading {path}")
    try:
        parsed = json.loads(done.stdout)
    except ValueError:
        raise JobFailed(f"qemu-img info {path} printed something that is not JSON") from None
    return parsed if isinstance(parsed, dict) else {}


def check(path: str, deadline: Deadline) -> Optional[str]:
    """None when ``qemu-img check`` finds the image sound, else what it said."""
    done = run(["check", "-q", "-f", "qcow2", path], deadline, f"checking {path}", check=False)
    if done.returncode == 0:
        return None
    return (done.stderr or done.stdout).strip() or f"qemu-img check exited with {done.returncode}"


def convert(source: str, target: str, target_format: str, wait: Deadline,
            progress: Optional[Callable[[JobState], None]] = None, size: int = 0, *,
            descriptor: Optional[int] = None) -> None:
    """Write ``source`` (read through its backing chain) to ``target`` as one standalone image.

    With ``descriptor`` (``target`` created empty and open), qemu-img writes
    through it, never through the name.

    Progress comes from qemu-img's own ``-p`` output (percent), as job states
    in bytes of the disk's ``size`` where it is known.
    """
    scale = size or PROGRESS_SCALE
    arguments = ["qemu-img", "convert", "-f", "qcow2", "-O", target_format]
    if progress is not None:
        arguments.append("-p")
    try:
        child = subprocess.Popen(arguments + [source, target if descriptor is None else by_descriptor(descriptor)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 pass_fds=() if descriptor is None else (descriptor,))
    except FileNotFoundError:
        raise UsageError(QEMU_IMG_MISSING) from None
    assert child.stdout is not None and child.stderr is not None
    errors = b""
    try:
        pending = b""
        open_streams = [child.stdout, child.stderr]
        while open_streams:
            ready, _, _ = select.select(open_streams, [], [], min(wait.remaining(f"qemu-img convert to {target}"), 1.0))
            for stream in ready:
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:
                    open_streams.remove(stream)
                elif stream is child.stderr:
                    errors += chunk
                else:
                    pending += chunk
                    found = PROGRESS.findall(pending)
                    pending = pending[-64:]
                    if found and progress is not None:
                        done = int(float(found[-1]) * scale / 100)
                        progress(JobState("restore", "convert", "running", done, scale))
        code = child.wait(timeout=wait.remaining(f"qemu-img convert to {target}"))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    if code != 0:
        raise JobFailed(f"qemu-img convert to {target} failed: {errors.decode('utf-8', 'replace').strip()}")
    if progress is not None:
        progress(JobState("restore", "convert", "concluded", scale, scale))
