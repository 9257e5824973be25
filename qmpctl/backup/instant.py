"""Boot from a backup at once: ``restore CHAIN --instant TARGET`` makes a thin overlay on the point.

TARGET is a new qcow2 image whose backing file is the point's image (an
absolute path, format given): creating it takes milliseconds whatever the
disk's size, a VM can start on it right away, and everything it writes goes
to TARGET. The chain's images are only ever its read-only backing files.
``qmpctl stream`` later copies the backing data into the running VM's disk
(:mod:`qmpctl.vm.stream`), after which TARGET stands alone.

While TARGET depends on the chain, the chain folder holds a reference file,
``instant-<hash of TARGET's path>.json``, naming TARGET. Rotation
(``backup --into --keep-chains``) never deletes a chain that holds one;
``stream`` removes it when the disk no longer needs the chain, and so may
the user once TARGET is deleted.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from qmpctl.backup import qemu_img
from qmpctl.backup.holds import reference_name
from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from qmpctl.backup.point import Point
    from typing import Any, Optional

def _write_reference(chain_dir: str, target: str, point: Point) -> str:
    path = os.path.join(chain_dir, reference_name(target))
    data = json.dumps({"target": target, "image": os.path.basename(point.image), "point": point.number,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode() + b"\n"
    try:
        descriptor, partial = tempfile.mkstemp(prefix=".instant-", suffix=".partial", dir=chain_dir)
    except OSError as exc:
        raise UsageError(f"cannot record in {chain_dir} that {target} depends on the chain ({exc.strerror or exc}); "
                         "without that record, rotation could delete the chain under it: nothing was created") \
            from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        raise
    return path


def release(chain_dir: str, target: str) -> Optional[str]:
    """Remove the reference of the overlay at ``target`` from ``chain_dir``; its path when there was one."""
    path = os.path.join(chain_dir, reference_name(target))
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    return path


def create_instant(point: Point, target: str, deadline: Deadline) -> dict[str, Any]:
    """TARGET as a new thin qcow2 overlay on ``point``; never replaces an existing file.

    The overlay is written under a temporary name in TARGET's folder and then
    hard-linked to TARGET, which fails if anything is there: exclusive, and no
    half-made TARGET is ever visible.
    """
    target = os.path.abspath(target)
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        raise UsageError(f"--instant {target}: it is a directory")
    if os.path.lexists(target):
        raise UsageError(f"--instant {target} exists; qmpctl never overwrites it")
    if not os.path.isdir(folder):
        raise UsageError(f"--instant {target}: the directory {folder} does not exist")
    started = time.monotonic()
    reference = _write_reference(point.chain_dir, target, point)
    linked = False
    try:
        descriptor, partial = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".partial", dir=folder)
        os.close(descriptor)
        try:
            arguments = ["create", "-q", "-f", "qcow2", "-b", point.image, "-F", "qcow2", partial]
            if point.size:
                arguments.append(str(point.size))
            qemu_img.run(arguments, deadline, f"creating the overlay {target}")
            try:
                os.link(partial, target)
            except FileExistsError:
                raise UsageError(f"{target} appeared meanwhile; it was left alone") from None
            linked = True
        finally:
            os.unlink(partial)
    finally:
        if not linked:
            os.unlink(reference)
    return {"target": target, "backing": point.image, "format": "qcow2", "reference": reference,
            "seconds": round(time.monotonic() - started, 3), **point.summary()}
