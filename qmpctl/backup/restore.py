"""Trust a chain offline: verify every image, restore the disk as it was at any backup, boot it as a drill.

All of it works on plain files with qemu-img (no VM needed), except the boot
check, which starts a throwaway QEMU on the restored image with ``-snapshot``
(nothing is written to it) and asks the guest agent inside.
"""

from __future__ import annotations

import datetime
import os
import shutil
import stat
import subprocess
import tempfile
import time

from qmpctl.backup import qemu_img, safe_open
from qmpctl.backup.manifest import MANIFEST, chains_of, read_manifest, sha256_of
from qmpctl.deadline import Deadline
from qmpctl.errors import ConnectError, DeadlineExceeded, ProtocolError, QmpctlError, UsageError, VerificationFailed
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.signals import die_with_parent, stop_child
from qmpctl.timing import BOOT_CHECK_POLL, CHILD_STOP_GRACE

if TYPE_CHECKING:
    from typing import Any, Optional
    from qmpctl.vm.jobs import Progress

CONSOLE_TAIL_LINES = 20
FORMATS = ("qcow2", "raw")
"""What restore writes, and so what the boot check tells QEMU the image is."""
AGENT_CHANNEL = "org.qemu.guest_agent.0"


# -- verify -----------------------------------------------------------------------------------------

class ImageCheck(NamedTuple):
    """What ``backup-verify`` found for one image of a chain."""

    chain: str
    file: str
    level: str
    problem: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"chain": self.chain, "image": os.path.join(self.chain, self.file),
                                 "level": self.level, "ok": self.ok}
        if self.problem is not None:
            found["problem"] = self.problem
        return found


def chain_folders(path: str, *, fleet: bool = False) -> list[str]:
    """``path`` itself when it is a chain folder, else every chain folder in it (oldest first); ``fleet``:
    else those of each VM's folder in it (a fleet's DIR, for verify: a restore needs one VM's folder)."""
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, MANIFEST)):
        return [path]
    if not os.path.isdir(path):
        raise UsageError(f"{path} is not a directory")
    found = [chain_dir for chain_dir, _ in chains_of(path)]
    if not found and fleet:  # a fleet's DIR: a folder of chains per VM, DIR/<vm>/<chain>/
        found = [chain_dir for name in sorted(os.listdir(path)) if not name.startswith(".")
                 and os.path.isdir(os.path.join(path, name)) and not os.path.islink(os.path.join(path, name))
                 for chain_dir, _ in chains_of(os.path.join(path, name))]
    if not found:
        raise UsageError(f"{path} holds no chain (no {MANIFEST} in it or in its folders)")
    return found


def _problem(chain_dir: str, entry: dict[str, Any], previous: Optional[str], deadline: Deadline,
             checksums: bool = True) -> Optional[str]:
    path = os.path.join(chain_dir, str(entry.get("file")))
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"missing ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file (a symbolic link?): a chain's images are files of the chain's folder"
    if info.st_size != entry.get("size"):
        return f"its size is {info.st_size} bytes, the manifest says {entry.get('size')}"
    if checksums:
        try:
            digest = sha256_of(path)
        except (OSError, QmpctlError) as exc:
            return f"it cannot be read ({getattr(exc, 'strerror', None) or exc})"
        if digest != entry.get("sha256"):
            return "its sha256 differs from the manifest's: the file changed after the backup"
    said = qemu_img.check(path, deadline)
    if said is not None:
        return f"qemu-img check: {said}"
    found = qemu_img.info(path, deadline)
    backing = found.get("backing-filename")
    if backing != previous:
        expected = f"backed by {previous}" if previous else "standalone (no backing file)"
        return f"it should be {expected}, but its backing file is {backing}"
    if backing is not None and found.get("backing-filename-format") != "qcow2":
        return (f"its backing file's format is {found.get('backing-filename-format') or 'not named'}, not qcow2: "
                "qemu-img would guess it")
    specific = found.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    if isinstance(data, dict) and data.get("data-file"):
        return f"it names an external data file, {data['data-file']}: a chain's images hold their own data"
    return None


def verify_chain(chain_dir: str, deadline: Deadline, upto: Optional[int] = None, *,
                 checksums: bool = True) -> list[ImageCheck]:
    """Check the images of one chain in order (the first ``upto`` of them): present, unchanged, sound, linked.

    ``checksums=False`` leaves out the one check that reads every byte (the sha256): what is left reads
    metadata only, whatever the images' size.
    """
    manifest = read_manifest(chain_dir)
    checks = []
    previous = None
    for entry in manifest["images"][:upto]:
        name = str(entry.get("file"))
        checks.append(ImageCheck(chain_dir, name, str(entry.get("level")),
                                 _problem(chain_dir, entry, previous, deadline, checksums)))
        previous = name
    return checks


def verify(path: str, deadline: Deadline) -> list[ImageCheck]:
    return [check for chain_dir in chain_folders(path, fleet=True) for check in verify_chain(chain_dir, deadline)]


def first_broken(checks: list[ImageCheck]) -> Optional[VerificationFailed]:
    for check in checks:
        if not check.ok:
            return VerificationFailed(f"{os.path.join(check.chain, check.file)}: {check.problem}")
    return None


# -- restore ----------------------------------------------------------------------------------------

def _parse_time(text: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--at wants an ISO 8601 time like 2026-12-01T03:00 or 2026-12-01T03:00:00Z, "
                         f"got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def choose_point(images: list[dict[str, Any]], point: Optional[int], at: Optional[str]) -> int:
    """The 1-based backup to restore: ``point``, the last one started at or before ``at``, or the latest."""
    if point is not None and at is not None:
        raise UsageError("give --point or --at, not both")
    if not images:
        raise UsageError("the chain lists no image")
    if point is not None:
        if not 1 <= point <= len(images):
            raise UsageError(f"--point {point}: the chain has backups 1 to {len(images)}")
        return point
    if at is not None:
        moment = _parse_time(at)
        earlier = [number for number, entry in enumerate(images, 1)
                   if _parse_time(str(entry.get("started"))) <= moment]
        if not earlier:
            raise UsageError(f"--at {at}: the chain's first backup started later, at {images[0].get('started')}")
        return earlier[-1]
    return len(images)


def _chain_to_restore(path: str) -> str:
    folders = chain_folders(path)
    if len(folders) == 1:
        return folders[0]
    devices = {str(read_manifest(folder).get("device")) for folder in folders}
    if len(devices) > 1:
        raise UsageError(f"{path} holds chains of several disks ({', '.join(sorted(devices))}): "
                         "give one chain folder")
    return folders[-1]


def resolve_point(chain: str, deadline: Deadline, point: Optional[int], at: Optional[str], *,
                  checksums: bool = True) -> tuple[str, dict[str, Any], int]:
    """The chain folder, its manifest and the number of the backup ``--point``/``--at`` names (the latest by
    default), once every image that point needs is verified.

    :raise VerificationFailed: an image up to that point is missing, changed or broken (exit 6).
    """
    chain_dir = _chain_to_restore(chain)
    manifest = read_manifest(chain_dir)
    number = choose_point(manifest["images"], point, at)
    broken = first_broken(verify_chain(chain_dir, deadline, number, checksums=checksums))
    if broken is not None:
        raise broken
    return chain_dir, manifest, number


def restore(chain: str, target: str, deadline: Deadline, *, point: Optional[int] = None, at: Optional[str] = None,
            force: bool = False, target_format: str = "qcow2", progress: Optional[Progress] = None) -> dict[str, Any]:
    """Write the disk as it was at backup ``point`` of ``chain`` to the new standalone image ``target``.

    The images up to that point are verified first; the image is written
    under a temporary name and only then linked to ``target``, so neither an
    existing file nor a half-written one is ever left at that name.
    """
    target = os.path.abspath(target)
    if os.path.isdir(target):
        raise UsageError(f"cannot restore to {target}: it is a directory")
    if os.path.lexists(target) and not force:
        raise UsageError(f"{target} exists; restore does not overwrite it (pass --force to replace it)")
    if not os.path.isdir(os.path.dirname(target)):
        raise UsageError(f"cannot restore to {target}: the directory {os.path.dirname(target)} does not exist")
    chain_dir, manifest, number = resolve_point(chain, deadline, point, at)
    entry = manifest["images"][number - 1]
    source = os.path.join(chain_dir, str(entry["file"]))
    started = time.monotonic()
    folder, name = os.path.split(target)
    folder = os.path.realpath(folder)  # the folder TARGET names, opened once: its files are used through it
    dir_fd = safe_open.open_dir(folder, folder)
    try:
        # A name of qmpctl's own, created exclusively; qemu-img writes through the open file, never the name.
        with safe_open.replacement(name, target, dir_fd, overwrite=force) as descriptor:
            qemu_img.convert(source, target, target_format, deadline, progress,
                             int(manifest.get("size") or 0), descriptor=descriptor)
    finally:
        os.close(dir_fd)
    return {"chain": chain_dir, "point": number, "points": len(manifest["images"]),
            "level": entry.get("level"), "started": entry.get("started"), "image": source,
            "target": target, "format": target_format, "device": manifest.get("device"),
            "seconds": round(time.monotonic() - started, 3)}


# -- boot check -------------------------------------------------------------------------------------

def _drive_option(path: str, image_format: str, drive_id: str = "restored") -> str:
    escaped = path.replace(",", ",,")
    return f"file={escaped},format={image_format},if=none,id={drive_id},snapshot=on"


def _more_drives(more_disks: tuple[str, ...], flash_vars: Optional[str], image_format: str,
                 qemu_args: list[str]) -> tuple[list[str], list[str]]:
    """The other disks of a whole-VM drill (after the first, in order), and the UEFI variables as the second
    pflash unit, after the firmware's code that ``qemu_args`` must give."""
    disks: list[str] = []
    for number, path in enumerate(more_disks, 1):
        disks += ["-drive", _drive_option(path, image_format, f"restored{number}"),
                  "-device", f"virtio-blk-pci,drive=restored{number}"]
    if flash_vars is None:
        return disks, []
    if not any("if=pflash" in arg for arg in qemu_args):
        raise UsageError("the backup holds UEFI variables (pflash): give the firmware's code first, e.g. "
                         "--qemu-arg=-drive --qemu-arg=if=pflash,format=raw,readonly=on,file=OVMF_CODE.fd")
    escaped = flash_vars.replace(",", ",,")
    return disks, ["-drive", f"if=pflash,file={escaped},format={image_format},snapshot=on"]


def _console_tail(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    tail = [line for line in lines if line.strip()][-CONSOLE_TAIL_LINES:]
    return "\n".join(tail)


def _stop(child: "subprocess.Popen[bytes]") -> None:
    stop_child(child, CHILD_STOP_GRACE)


def boot_check(image: str, *, image_format: str, qemu_args: list[str], boot_timeout: float,
               check_command: Optional[str], reply_timeout: float,
               qemu_binary: str = "qemu-system-x86_64", more_disks: tuple[str, ...] = (),
               flash_vars: Optional[str] = None) -> dict[str, Any]:
    """Boot ``image`` in a throwaway QEMU (``-snapshot``) and wait until its guest agent answers.

    ``image_format`` is the format restore wrote, never one guessed from the
    image: a raw image holds the guest's bytes, which can look like a qcow2
    header naming any host file as its backing file.

    Exit 6 (:class:`VerificationFailed`) with the console's last lines when
    the guest does not answer within ``boot_timeout`` or ``check_command``
    fails. The QEMU is stopped and its files removed on every path.

    A whole VM: ``more_disks`` follow ``image`` in that order, and
    ``flash_vars`` (UEFI variables) is the second pflash unit, after the
    firmware's code ``qemu_args`` give.
    """
    from qmpctl.guest import exec as guest_exec
    from qmpctl.wire.address import parse_address
    from qmpctl.wire.agent import AgentSession
    from qmpctl.wire.request import Request

    if not boot_timeout > 0:
        raise UsageError(f"--boot-timeout must be more than 0 seconds, got {boot_timeout:g}")
    if image_format not in FORMATS:
        raise UsageError(f"cannot boot a {image_format!r} image: restore writes {' or '.join(FORMATS)}")
    disks, flash = _more_drives(more_disks, flash_vars, image_format, qemu_args)
    workdir = tempfile.mkdtemp(prefix="qmpctl-boot-")
    agent_path = os.path.join(workdir, "qga.sock")
    console = os.path.join(workdir, "console.log")
    command = [qemu_binary, "-nodefaults", "-display", "none", "-no-reboot",
               "-drive", _drive_option(image, image_format), "-device", "virtio-blk-pci,drive=restored", *disks,
               "-chardev", f"socket,path={agent_path},server=on,wait=off,id=qga0",
               "-device", "virtio-serial", "-device", f"virtserialport,chardev=qga0,name={AGENT_CHANNEL}",
               "-serial", f"file:{console}", *qemu_args, *flash]
    started = time.monotonic()
    child: Optional[subprocess.Popen[bytes]] = None
    log = os.path.join(workdir, "qemu.log")
    try:
        with open(log, "wb") as errors:
            try:
                child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=errors, stderr=errors,
                                         preexec_fn=die_with_parent)
            except FileNotFoundError:
                raise UsageError(f"{qemu_binary} is not installed") from None
        boot = Deadline(boot_timeout)

        def failed(why: str) -> VerificationFailed:
            tail = _console_tail(console) or _console_tail(log)
            if not tail:
                return VerificationFailed(f"{why}; the serial console stayed empty (does the guest log to ttyS0?)")
            return VerificationFailed(f"{why}; the console's last lines:\n{tail}")

        session = None
        while session is None:
            if child.poll() is not None:
                raise failed(f"QEMU exited with {child.returncode} before the guest agent answered")
            if boot.expired():
                raise failed(f"the restored guest's agent did not answer within --boot-timeout {boot_timeout:g}s")
            if not os.path.exists(agent_path):
                time.sleep(BOOT_CHECK_POLL)
                continue
            try:
                attempt = AgentSession.connect(parse_address(agent_path), Deadline(min(2.0, boot_timeout)))
                attempt.execute(Request("guest-ping", protocol="qga"), Deadline(min(2.0, boot_timeout)))
                session = attempt
            except (ConnectError, DeadlineExceeded, ProtocolError):
                time.sleep(BOOT_CHECK_POLL)
        booted = round(time.monotonic() - started, 3)
        result: dict[str, Any] = {"image": image, "booted": True, "seconds": booted}
        try:
            if check_command is not None:
                pid = guest_exec.start(session, guest_exec.exec_request(["sh", "-c", check_command]),
                                       Deadline(reply_timeout))
                status, _ = guest_exec.wait_for_exit(session, pid, reply_timeout=reply_timeout,
                                                     wait_timeout=max(boot.expires_at - time.monotonic(), 1.0))
                result["check"] = {"command": check_command, "exitcode": status.exit_status,
                                   "stdout": status.stdout.decode("utf-8", "replace"),
                                   "stderr": status.stderr.decode("utf-8", "replace")}
                if status.exit_status != 0:
                    raise VerificationFailed(f"the check command exited with {status.exit_status} in the restored "
                                             f"guest: {status.stderr.decode('utf-8', 'replace').strip()}")
        except QmpctlError as exc:
            if isinstance(exc, VerificationFailed):
                raise
            raise failed(f"the check command could not run in the restored guest: {exc.message}") from None
        finally:
            session.close()
        return result
    finally:
        if child is not None:
            _stop(child)
        shutil.rmtree(workdir, ignore_errors=True)
