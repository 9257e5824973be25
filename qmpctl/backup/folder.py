"""The chain folder DIR of ``backup --into``, on this host or on the VM's host over SSH.

:mod:`qmpctl.backup.chain` decides; a folder does the file-system work: lock the
disks, read what DIR holds, create the new images, record them, rotate old
chains, take back an incomplete image. :class:`LocalFolder` does it with
system calls. :class:`~qmpctl.backup.remote_folder.RemoteFolder` does the same on the host of an
``ssh://`` VM with POSIX ``sh`` scripts (coreutils, util-linux's ``flock``)
through that host's SSH master, batched so a run costs a handful of round
trips; QEMU formats the images there (``blockdev-create``), so the host needs
no qemu-img. Paths in messages say which side they are on.
"""

from __future__ import annotations

import contextlib
import os

from qmpctl.backup import qemu_img
from qmpctl.backup.manifest import MANIFEST, manifest_bytes, parse_manifest, read_file, sha256_of
from qmpctl.errors import Busy
from qmpctl.records import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Any, Iterator, Optional
    from qmpctl.deadline import Deadline


def lock_name(label: str) -> str:
    """The lock file of one disk in DIR (``label`` is the disk's name made file-safe)."""
    return f".{label}.lock"


class View(NamedTuple):
    """What DIR held when the run looked, under the disks' locks: enough to plan without looking again."""

    names: frozenset[str]
    """Every entry of DIR."""
    chains: list[tuple[str, dict[str, Any]]]
    """(name, manifest) of each chain folder, sorted by name (oldest first); a folder whose chain.json is not a
    valid manifest makes the listing fail (exit 6): nothing is planned on a chain qmpctl cannot read."""
    marked: frozenset[str]
    """Folders with something at chain.json: a chain, not one whose first run was killed."""
    dirs: frozenset[str]
    files: dict[str, dict[str, Optional[int]]]
    """Per chain: each entry's size (links followed), None where it cannot be had (a dangling link)."""


class NewImage:
    """One image a run creates: where, and how far its creation got (what a failure must take back)."""

    __slots__ = ("chain_dir", "path", "size", "backing", "make_dir", "dir_made", "created")

    def __init__(self, chain_dir: str, path: str, size: int, backing: Optional[str], make_dir: bool) -> None:
        self.chain_dir = chain_dir
        self.path = path
        self.size = size
        self.backing = backing
        """The image before it in the chain, relative to the chain's folder; None for a full backup."""
        self.make_dir = make_dir
        self.dir_made = False
        self.created = False


class ChainFolder:
    """The file-system side of a chain run; subclasses say where the files are."""

    side = ""
    """How messages say where a path is: '' here, ' on root@hv1' on a VM's host."""
    formats_images = True
    """Whether :meth:`create` writes the qcow2 images itself; if not, QEMU formats them (blockdev-create)."""
    host: Optional[str] = None

    def __init__(self, into: str) -> None:
        self.into = into

    def where(self, path: str) -> str:
        return f"{path}{self.side}"

    def lock(self, devices: list[tuple[str, str]], deadline: Deadline) -> contextlib.AbstractContextManager[None]:
        """DIR made if missing, and one lock per (device, label): a second qmpctl on the same disk is Busy."""
        raise NotImplementedError

    def scan(self, deadline: Deadline) -> View:
        raise NotImplementedError

    def create(self, images: list[NewImage], deadline: Deadline) -> None:
        """Each image's folder (when new) and the image, exclusively: never over an existing file."""
        raise NotImplementedError

    def measure(self, paths: list[str], deadline: Deadline) -> list[tuple[int, str]]:
        """Each finished image flushed to disk, then its size and sha256."""
        raise NotImplementedError

    def write_manifest(self, chain_dir: str, manifest: dict[str, Any], deadline: Deadline) -> None:
        """Temp file, fsync, rename, fsync the folder: a crash leaves the old manifest or the new one."""
        raise NotImplementedError

    def remove_trees(self, paths: list[str], deadline: Deadline) -> list[str]:
        """Delete whole chains; notes on the ones that could not be."""
        raise NotImplementedError

    def discard(self, images: list[NewImage], deadline: Deadline) -> list[str]:
        """Remove what :meth:`create` made for images that were not recorded; notes saying so."""
        raise NotImplementedError

    def _busy(self, device: str, path: str) -> Busy:
        return Busy(f"busy: another qmpctl is backing up {device} into {self.where(self.into)} right now "
                    f"(it holds {path}); nothing was changed")


# -- this host --------------------------------------------------------------------------------------

class LocalFolder(ChainFolder):
    """DIR on this host: system calls, the images created by qemu-img."""

    def lock(self, devices: list[tuple[str, str]], deadline: Deadline) -> contextlib.AbstractContextManager[None]:
        return self._locks(devices)

    @contextlib.contextmanager
    def _locks(self, devices: list[tuple[str, str]]) -> Iterator[None]:
        import fcntl

        if not os.path.isdir(self.into):
            os.mkdir(self.into)
        handles = []
        try:
            for device, label in sorted(devices):
                path = os.path.join(self.into, lock_name(label))
                handle = open(path, "a+b")
                handles.append(handle)
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise self._busy(device, path) from None
            yield
        finally:
            for handle in handles:
                handle.close()

    def scan(self, deadline: Deadline) -> View:
        try:
            names = sorted(os.listdir(self.into))
        except FileNotFoundError:
            names = []
        chains: list[tuple[str, dict[str, Any]]] = []
        marked: set[str] = set()
        dirs: set[str] = set()
        files: dict[str, dict[str, Optional[int]]] = {}
        for name in names:
            folder = os.path.join(self.into, name)
            if not os.path.isdir(folder):
                continue
            dirs.add(name)
            path = os.path.join(folder, MANIFEST)
            if not os.path.exists(path):
                continue
            marked.add(name)
            chains.append((name, parse_manifest(read_file(path, path), path)))
            sizes: dict[str, Optional[int]] = {}
            for entry in os.listdir(folder):
                try:
                    sizes[entry] = os.path.getsize(os.path.join(folder, entry))
                except OSError:
                    sizes[entry] = None
            files[name] = sizes
        return View(frozenset(names), chains, frozenset(marked), frozenset(dirs), files)

    def create(self, images: list[NewImage], deadline: Deadline) -> None:
        for image in images:
            if image.make_dir:
                os.mkdir(image.chain_dir)
                image.dir_made = True
            descriptor = os.open(image.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never overwrite
            os.close(descriptor)
            image.created = True
            self._owned_like_into(image.path, image.chain_dir if image.dir_made else None)
            qemu_img.create(image.path, image.size, deadline, image.backing)

    def _owned_like_into(self, *paths: Optional[str]) -> None:
        """Root backing up a VM whose QEMU runs as another user (libvirt's): the files QEMU must open
        belong to DIR's owner, as DIR is the folder that user was given."""
        if os.geteuid() != 0:
            return
        owner = os.stat(self.into)
        if owner.st_uid == 0 and owner.st_gid == 0:
            return
        for path in paths:
            if path is not None:
                os.chown(path, owner.st_uid, owner.st_gid)

    def measure(self, paths: list[str], deadline: Deadline) -> list[tuple[int, str]]:
        measured = []
        for path in paths:
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
            measured.append((os.path.getsize(path), sha256_of(path)))
        return measured

    def write_manifest(self, chain_dir: str, manifest: dict[str, Any], deadline: Deadline) -> None:
        path = os.path.join(chain_dir, MANIFEST)
        temporary = f"{path}.tmp-{os.getpid()}"
        with open(temporary, "wb") as handle:
            handle.write(manifest_bytes(manifest))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        descriptor = os.open(chain_dir, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def remove_trees(self, paths: list[str], deadline: Deadline) -> list[str]:
        import shutil

        notes = []
        for path in paths:
            try:
                shutil.rmtree(path)
            except OSError as exc:
                notes.append(f"could not delete the old chain {path}: {exc.strerror or exc}")
        return notes

    def discard(self, images: list[NewImage], deadline: Deadline) -> list[str]:
        notes = []
        for image in images:
            if image.created:
                try:
                    os.unlink(image.path)
                    notes.append(f"removed the incomplete {image.path}")
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    notes.append(f"could not remove the incomplete {image.path}: {exc.strerror or exc}")
                image.created = False
            if image.dir_made:
                with contextlib.suppress(OSError):
                    os.rmdir(image.chain_dir)
                image.dir_made = False
        return notes
