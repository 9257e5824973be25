"""Restore a whole VM: one standalone image per disk, all from the same grouped backup.

``restore DIR/<vm> OUTDIR`` reads every chain in the VM's folder. A whole-VM
run backs all its disks up from one instant and records the same ``started``
time for each image it adds, so a backup of the VM is a ``started`` time:
``--at TIME`` picks the last one at or before TIME, ``--point N`` the N-th
image of each disk when every disk has a single chain, and by default the
latest. Each disk is restored with :func:`qmpctl.backup.restore.restore`
(verified first, never over a file without ``--force``) to
``OUTDIR/<device>.qcow2`` (``.raw`` with ``--format raw``); when one fails,
the images this call wrote are removed.
"""

from __future__ import annotations

import datetime
import os
import re
from typing import TYPE_CHECKING, Any, Optional

from qmpctl.backup import restore
from qmpctl.backup.manifest import MANIFEST, chains_of
from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError

if TYPE_CHECKING:
    from qmpctl.vm.jobs import Progress

PFLASH_DEVICES = re.compile(r"pflash\d+\Z")
"""The drive names QEMU gives ``-drive if=pflash`` units: restored as flash, not as a disk."""


def is_whole_vm(path: str, target: str) -> bool:
    """True when ``restore PATH TARGET`` means a whole VM: PATH holds chains of several disks, or TARGET is a
    folder (an existing one, or written with a trailing ``/``)."""
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, MANIFEST)) or not os.path.isdir(path):
        return False
    if target.endswith("/") or (os.path.isdir(target) and not os.path.islink(target)):
        return True
    return len({str(manifest.get("device")) for _, manifest in chains_of(path)}) > 1


def _moment(text: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def _natural(device: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", device)]


def file_label(device: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", device.strip("#/")) or "disk"


def choose(path: str, point: Optional[int], at: Optional[str]) -> tuple[str, list[tuple[str, str, int]], list[str]]:
    """The backup to restore: its ``started`` time, (device, chain folder, image number) per disk in the
    disks' order, and the devices DIR has chains of that this backup does not hold."""
    if point is not None and at is not None:
        raise UsageError("give --point or --at, not both")
    chains = chains_of(os.path.abspath(path))
    if not chains:
        raise UsageError(f"{path} holds no chain (no {MANIFEST} in its folders)")
    devices = sorted({str(manifest.get("device")) for _, manifest in chains}, key=_natural)
    if point is not None:
        several = sorted({str(manifest.get("device")) for _, manifest in chains
                          if sum(1 for _, other in chains if other.get("device") == manifest.get("device")) > 1})
        if several:
            raise UsageError(f"--point needs one chain per disk, and {', '.join(several)} have several: give --at "
                             "TIME (the backups' \"started\" times are in each chain.json)")
        picks = []
        for chain_dir, manifest in chains:
            images = manifest["images"]
            if not 1 <= point <= len(images):
                raise UsageError(f"--point {point}: the chain of {manifest.get('device')} has backups 1 to "
                                 f"{len(images)}")
            picks.append((str(manifest.get("device")), chain_dir, point, str(images[point - 1]["started"])))
        times = {started for *_, started in picks}
        if len(times) > 1:
            raise UsageError(f"--point {point} is not one backup of the VM: its images started at "
                             f"{', '.join(sorted(times))}; give --at TIME")
        started = times.pop()
    else:
        found = [(str(manifest.get("device")), chain_dir, number, str(entry["started"]))
                 for chain_dir, manifest in chains for number, entry in enumerate(manifest["images"], 1)]
        if at is not None:
            limit = restore._parse_time(at)
            found = [pick for pick in found if _moment(pick[3]) <= limit]
            if not found:
                raise UsageError(f"--at {at}: the VM's first backup started later")
        started = max((pick[3] for pick in found), key=_moment)
        picks = [pick for pick in found if _moment(pick[3]) == _moment(started)]
    chosen = sorted(((device, chain_dir, number) for device, chain_dir, number, _ in picks),
                    key=lambda pick: _natural(pick[0]))
    held = {device for device, _, _ in chosen}
    return started, chosen, [device for device in devices if device not in held]


def restore_vm(path: str, outdir: str, deadline: Deadline, *, point: Optional[int], at: Optional[str], force: bool,
               target_format: str, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Write each disk of one backup of the VM to ``OUTDIR/<device>.<format>``; all or none of them."""
    started, chosen, missing = choose(path, point, at)
    outdir = os.path.abspath(outdir)
    if os.path.lexists(outdir) and (os.path.islink(outdir) or not os.path.isdir(outdir)):
        raise UsageError(f"{outdir} is not a folder: give a folder for the VM's disks")
    if not os.path.isdir(os.path.dirname(outdir)):
        raise UsageError(f"cannot restore to {outdir}: the directory {os.path.dirname(outdir)} does not exist")
    targets = [os.path.join(outdir, f"{file_label(device)}.{target_format}") for device, _, _ in chosen]
    if not force:
        present = [target for target in targets if os.path.lexists(target)]
        if present:
            raise UsageError(f"{', '.join(present)} exist(s); restore does not overwrite (pass --force to replace)")
    made_dir = not os.path.isdir(outdir)
    if made_dir:
        os.mkdir(outdir, 0o700)
    written: list[str] = []
    disks = []
    try:
        for (_, chain_dir, number), target in zip(chosen, targets, strict=True):
            disks.append(restore.restore(chain_dir, target, deadline, point=number, force=force,
                                         target_format=target_format, progress=progress))
            written.append(target)
    except BaseException:
        for target in written:  # all or none: a half-restored VM is not a restore
            try:
                os.unlink(target)
            except OSError:
                pass
        if made_dir:
            try:
                os.rmdir(outdir)
            except OSError:
                pass
        raise
    result: dict[str, Any] = {"vm": os.path.basename(os.path.abspath(path)), "started": started, "folder": outdir,
                              "disks": disks}
    if missing:
        result["not-in-backup"] = missing
    return result


def boot_disks(result: dict[str, Any]) -> tuple[list[str], Optional[str]]:
    """The restored disks in boot order, and the UEFI variables (pflash) among them, if any."""
    disks = [str(disk["target"]) for disk in result["disks"] if not PFLASH_DEVICES.match(str(disk["device"]))]
    flash = [str(disk["target"]) for disk in result["disks"] if PFLASH_DEVICES.match(str(disk["device"]))]
    if len(flash) > 1:
        raise UsageError("--boot-check boots one pflash of UEFI variables; the backup holds several")
    return disks, flash[0] if flash else None
