"""Single files from a backup point, through libguestfs: list, read or extract them without restoring the disk.

One ``guestfish`` runs per call, talked to line by line (``stdbuf -oL``
keeps its output flowing through the pipe): each command is sent with
``-`` (a failure does not end guestfish) and followed by ``echo`` of a
marker, so qmpctl reads each command's own output and error. The image is
always added read-only (``--ro``) with its format (``--format=qcow2``):
libguestfs reads the backing chain itself and never probes or writes it.

The filesystem is found by inspection (the guest's mount points, for a disk
with an OS); a data disk without an OS uses its only filesystem; otherwise
``--filesystem DEVICE`` names it. libguestfs gets a temporary folder of
qmpctl's own (``TMPDIR`` and ``LIBGUESTFS_TMPDIR`` of the child: a killed
guestfish leaves its overlay there), removed on every path; its appliance
cache stays where it would have been. Under emulation the appliance needs
``LIBGUESTFS_BACKEND=direct`` and ``LIBGUESTFS_BACKEND_SETTINGS=force_tcg``:
qmpctl sets them unless the user did.
"""

from __future__ import annotations

import datetime
import os
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time

from qmpctl.signals import die_with_parent
from qmpctl.deadline import Deadline
from qmpctl.errors import JobFailed, NoSuchPath, UsageError, VerificationFailed
from qmpctl.records import TYPE_CHECKING
from qmpctl.signals import shielded
from qmpctl.timing import GUESTFISH_STOP_GRACE, POLL_FIRST

if TYPE_CHECKING:
    from typing import Any, Optional
    from qmpctl.backup.point import Point

MARKER = "@@qmpctl-guestfs-done@@"
GUESTFISH_MISSING = "guestfish is not installed (Debian: libguestfs-tools, and a kernel for its appliance: " \
                    "linux-image-amd64)"
DEFAULTS = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
NOT_MOUNTABLE = ("swap", "unknown")


def quoted(text: str) -> str:
    """One guestfish argument: double quotes, with backslashes and quotes escaped; no control characters."""
    if any(ord(character) < 32 or ord(character) == 127 for character in text):
        raise UsageError(f"{text!r}: a path with control characters cannot be passed to guestfish")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def guest_path(text: str, option: str) -> str:
    if not text.startswith("/"):
        raise UsageError(f"{option} wants an absolute path inside the disk, like /etc/hostname; got {text!r}")
    normal = os.path.normpath(text)
    return "/" + normal.lstrip("/")


def child_environment(private: str) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in DEFAULTS.items():
        env.setdefault(name, value)
    env.setdefault("LIBGUESTFS_CACHEDIR", os.environ.get("TMPDIR") or "/var/tmp")  # the appliance: built once
    env["TMPDIR"] = env["LIBGUESTFS_TMPDIR"] = private
    return env


def _wait_until_gone(group: int, grace: Deadline) -> None:
    """Until no process of ``group`` (the appliance's QEMU, libguestfs's recovery process) is still running:
    SIGKILL only marks them, and a QEMU with much memory takes a moment to go. Zombies count as gone (their
    new parent reaps them)."""
    while not grace.expired():
        running = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rpartition(b")")[2].split()
            except OSError:
                continue
            if len(fields) > 2 and fields[2] == str(group).encode() and fields[0] != b"Z":
                running = True
                break
        if not running:
            return
        time.sleep(POLL_FIRST)


class GuestfishError(Exception):
    """One guestfish command failed; the message is libguestfs's."""


class Guestfs:
    """A context manager: a read-only guestfish on ``point``, its filesystem mounted at /, gone after the block."""

    def __init__(self, point: Point, deadline: Deadline, *, filesystem: Optional[str] = None) -> None:
        self.point = point
        self.deadline = deadline
        self.filesystem = filesystem
        self.private: Optional[str] = None
        self.child: Optional[subprocess.Popen[bytes]] = None
        self.pending = b""
        self.mounted: dict[str, str] = {}

    # -- the session ----------------------------------------------------------------------------------

    def __enter__(self) -> "Guestfs":
        try:
            self._start()
            self._mount()
        except BaseException:
            with shielded():
                self._stop(clean=False)
            raise
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        with shielded():
            self._stop(clean=exc_type is None)

    def _start(self) -> None:
        self.private = tempfile.mkdtemp(prefix="qmpctl-guestfs-")
        command = ["stdbuf", "-oL", "-eL", "guestfish", "--ro", "--format=qcow2", "-a", self.point.image]
        if shutil.which("guestfish") is None:
            raise UsageError(GUESTFISH_MISSING)
        try:
            self.child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, env=child_environment(self.private),
                                          cwd=self.private, start_new_session=True, preexec_fn=die_with_parent)
        except FileNotFoundError:
            raise UsageError(GUESTFISH_MISSING) from None
        try:
            self.run("run")
        except GuestfishError as exc:
            raise JobFailed(f"libguestfs could not start its appliance: {exc}") from None

    def _stop(self, clean: bool) -> None:
        child, self.child = self.child, None
        if child is not None:
            if clean and child.poll() is None:
                try:
                    assert child.stdin is not None
                    child.stdin.write(b"exit\n")
                    child.stdin.close()
                    child.wait(timeout=GUESTFISH_STOP_GRACE)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if child.poll() is None:
                try:  # guestfish and the appliance's QEMU, which it started in the same session
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.wait()
                _wait_until_gone(child.pid, Deadline(GUESTFISH_STOP_GRACE))
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            try:
                os.killpg(child.pid, signal.SIGKILL)  # what the appliance left in the session
            except (ProcessLookupError, PermissionError):
                pass
        if self.private is not None:
            shutil.rmtree(self.private, ignore_errors=True)
            self.private = None

    def run(self, command: str) -> list[str]:
        """Send one guestfish command; its output lines, or :class:`GuestfishError` with libguestfs's message."""
        child = self.child
        assert child is not None and child.stdin is not None and child.stdout is not None
        try:
            child.stdin.write(f"-{command}\necho {MARKER}\n".encode())
            child.stdin.flush()
        except BrokenPipeError:
            raise JobFailed(f"guestfish exited ({child.wait()}) before it read {command.split()[0]}") from None
        lines: list[str] = []
        while True:
            newline = self.pending.find(b"\n")
            if newline < 0:
                ready, _, _ = select.select([child.stdout], [], [],
                                            self.deadline.remaining(f"guestfish to answer {command.split()[0]}"))
                if not ready:
                    continue
                chunk = os.read(child.stdout.fileno(), 65536)
                if not chunk:
                    tail = "\n".join(lines[-5:])
                    raise JobFailed(f"guestfish exited ({child.wait()}) during {command.split()[0]}: {tail}")
                self.pending += chunk
                continue
            line, self.pending = self.pending[:newline].decode("utf-8", "surrogateescape"), self.pending[newline + 1:]
            if line == MARKER:
                break
            lines.append(line)
        errors = [line.split("libguestfs: error: ", 1)[1] for line in lines if "libguestfs: error: " in line]
        if errors:
            raise GuestfishError("; ".join(errors))
        return lines

    # -- finding and mounting the filesystem --------------------------------------------------------------

    def filesystems(self) -> dict[str, str]:
        found = {}
        for line in self.run("list-filesystems"):
            device, _, kind = line.rpartition(": ")
            if device:
                found[device] = kind
        return found

    def _mount(self) -> None:
        filesystems = self.filesystems()
        mountable = {device: kind for device, kind in filesystems.items() if kind not in NOT_MOUNTABLE}
        if self.filesystem is not None:
            if self.filesystem not in filesystems:
                raise UsageError(f"--filesystem {self.filesystem}: the disk has {self._listing(filesystems)}")
            self._mount_one(self.filesystem, "/")
            return
        roots = [line for line in self.run("inspect-os") if line.strip()]
        if len(roots) == 1:
            points = []
            for line in self.run(f"inspect-get-mountpoints {quoted(roots[0])}"):
                mountpoint, _, device = line.partition(": ")
                points.append((mountpoint, device))
            for mountpoint, device in sorted(points, key=lambda point: len(point[0])):
                try:
                    self._mount_one(device, mountpoint)
                except VerificationFailed:
                    if mountpoint == "/":
                        raise
            if "/" in self.mounted.values():
                return
        if len(roots) > 1:
            raise UsageError(f"the disk holds {len(roots)} operating systems ({', '.join(roots)}): "
                             f"name one filesystem with --filesystem ({self._listing(filesystems)})")
        if not mountable:
            raise VerificationFailed(f"no readable filesystem in {self.point.image} "
                                     f"(libguestfs found {self._listing(filesystems)})")
        if len(mountable) > 1:
            raise UsageError(f"the disk holds several filesystems and no operating system: name one with "
                             f"--filesystem ({self._listing(mountable)})")
        self._mount_one(next(iter(mountable)), "/")

    @staticmethod
    def _listing(filesystems: dict[str, str]) -> str:
        if not filesystems:
            return "no filesystem"
        return ", ".join(f"{device} ({kind})" for device, kind in sorted(filesystems.items()))

    def _mount_one(self, device: str, mountpoint: str) -> None:
        try:
            self.run(f"mount-ro {quoted(device)} {quoted(mountpoint)}")
        except GuestfishError as exc:
            raise VerificationFailed(f"cannot read the filesystem on {device} of {self.point.image}: {exc}") from None
        self.mounted[device] = mountpoint

    # -- reading ----------------------------------------------------------------------------------------

    def _answer(self, command: str) -> bool:
        return self.run(command)[-1:] == ["true"]

    def require(self, path: str) -> None:
        """:class:`NoSuchPath` (exit 1) naming ``path`` when the backup does not hold it."""
        if not self._answer(f"exists {quoted(path)}"):
            raise NoSuchPath(f"{path}: no such file or folder in backup {self.point.number} of {self.point.chain_dir}")

    def _lstat(self, path: str) -> dict[str, int]:
        fields: dict[str, int] = {}
        for line in self.run(f"lstatns {quoted(path)}"):
            name, _, value = line.strip().partition(": ")
            if value.lstrip("-").isdigit():
                fields[name] = int(value)
        return fields

    def stat(self, path: str) -> dict[str, Any]:
        fields = self._lstat(path)
        mode = fields.get("st_mode", 0)
        kind = ("directory" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode)
                else "symlink" if stat.S_ISLNK(mode) else "other")
        mtime = datetime.datetime.fromtimestamp(fields.get("st_mtime_sec", 0), datetime.timezone.utc)
        return {"name": os.path.basename(path) or "/", "type": kind, "mode": f"{stat.S_IMODE(mode):04o}",
                "size": fields.get("st_size", 0), "uid": fields.get("st_uid", 0), "gid": fields.get("st_gid", 0),
                "mtime": mtime.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def listing(self, path: str) -> dict[str, Any]:
        """``path``'s entries (or ``path`` itself, a file), each with type, mode, size, owner and mtime."""
        self.require(path)
        if not self._answer(f"is-dir {quoted(path)} followsymlinks:true"):
            return {"path": path, "type": "file", "entries": [self.stat(path)]}
        names = [name for name in self.run(f"ls {quoted(path)}") if name]
        return {"path": path, "type": "directory",
                "entries": [self.stat(os.path.join(path, name)) for name in sorted(names)]}

    def download(self, path: str) -> str:
        """``path``'s exact bytes in a local file of qmpctl's private folder (gone after the block)."""
        self.require(path)
        if not self._answer(f"is-file {quoted(path)} followsymlinks:true"):
            raise NoSuchPath(f"{path} is not a regular file in backup {self.point.number}: use --ls or --extract")
        assert self.private is not None
        local = os.path.join(self.private, "download")
        try:
            self.run(f"download {quoted(path)} {quoted(local)}")
        except GuestfishError as exc:
            raise VerificationFailed(f"cannot read {path} from the backup: {exc}") from None
        return local

    def extract(self, path: str, folder: str, *, force: bool) -> dict[str, Any]:
        """Copy ``path`` (a file or a whole tree, modes and times kept) into ``folder``; never overwrites unless
        ``force``. Staged in a hidden folder inside ``folder`` and renamed into place."""
        final = os.path.join(folder, os.path.basename(path))
        self.require(path)
        staging = tempfile.mkdtemp(prefix=".qmpctl-extract-", dir=folder)
        try:
            try:
                self.run(f"copy-out {quoted(path)} {quoted(staging)}")
            except GuestfishError as exc:
                raise VerificationFailed(f"cannot read {path} from the backup: {exc}") from None
            made = os.path.join(staging, os.path.basename(path))
            if not os.path.isdir(made) or os.path.islink(made):  # copy-out keeps these for folders (tar), not files
                fields = self._lstat(path)
                if not os.path.islink(made):
                    os.chmod(made, stat.S_IMODE(fields.get("st_mode", 0o644)))
                os.utime(made, ns=(fields.get("st_atime_sec", 0) * 10**9 + fields.get("st_atime_nsec", 0),
                                   fields.get("st_mtime_sec", 0) * 10**9 + fields.get("st_mtime_nsec", 0)),
                         follow_symlinks=False)
            files, size = 0, 0
            if os.path.isdir(made) and not os.path.islink(made):
                for top, _, names in os.walk(made):
                    for name in names:
                        files += 1
                        size += os.lstat(os.path.join(top, name)).st_size
            else:
                files, size = 1, os.lstat(made).st_size
            if os.path.lexists(final):
                if not force:
                    raise UsageError(f"{final} appeared while extracting; it was left alone")
                if os.path.isdir(final) and not os.path.islink(final):
                    shutil.rmtree(final)
                else:
                    os.unlink(final)
            os.rename(made, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return {"path": path, "to": final, "type": "directory" if os.path.isdir(final) else "file",
                "files": files, "bytes": size}
