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
import stat

from qmpctl.backup import qemu_img, safe_open
from qmpctl.backup.manifest import MANIFEST, manifest_bytes, parse_manifest, read_file, sha256_of_descriptor
from qmpctl.errors import Busy, QmpctlError
from qmpctl.records import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Any, Iterator, Optional
    from qmpctl.deadline import Deadline

NEW_CHAIN = ".qmpctl-new-chain"
"""Written first into a chain's new folder, removed with the first manifest: its first line is the disk's label,
the rest names the run. A folder with it and no manifest is a killed first run's, which the next run of that disk
removes."""


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

    __slots__ = ("chain_dir", "path", "size", "backing", "make_dir", "dir_made", "created", "marker")

    def __init__(self, chain_dir: str, path: str, size: int, backing: Optional[str], make_dir: bool,
                 marker: str = "") -> None:
        self.chain_dir = chain_dir
        self.path = path
        self.size = size
        self.backing = backing
        """The image before it in the chain, relative to the chain's folder; None for a full backup."""
        self.make_dir = make_dir
        self.marker = marker
        """What :data:`NEW_CHAIN` says, in a new folder (``make_dir``)."""
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

    def remove_unborn(self, paths: list[str], labels: list[str], deadline: Deadline) -> list[str]:
        """Delete the folders among ``paths`` that hold no manifest and a :data:`NEW_CHAIN` of one of
        ``labels`` (disks whose lock the run holds); the ones deleted."""
        raise NotImplementedError

    def discard(self, images: list[NewImage], deadline: Deadline) -> list[str]:
        """Remove what :meth:`create` made for images that were not recorded; notes saying so."""
        raise NotImplementedError

    def _busy(self, device: str, path: str) -> Busy:
        return Busy(f"busy: another qmpctl is backing up {device} into {self.where(self.into)} right now "
                    f"(it holds {path}); nothing was changed")


# -- this host --------------------------------------------------------------------------------------

class LocalFolder(ChainFolder):
    """DIR on this host: system calls, the images created by qemu-img.

    DIR may be writable by QEMU's user while qmpctl runs as root: it is opened
    once (:mod:`qmpctl.backup.safe_open`), every name in it and in its chain
    folders is used through a folder descriptor without following links, and a
    chain folder that is a link or belongs to another user than root or DIR's
    owner is refused (exit 6).
    """

    def __init__(self, into: str) -> None:
        super().__init__(into)
        self.dir_fd: Optional[int] = None
        self.chain_fds: dict[str, int] = {}

    def lock(self, devices: list[tuple[str, str]], deadline: Deadline) -> contextlib.AbstractContextManager[None]:
        return self._locks(devices)

    @contextlib.contextmanager
    def _locks(self, devices: list[tuple[str, str]]) -> Iterator[None]:
        import fcntl

        try:
            os.mkdir(self.into)
        except FileExistsError:
            pass
        self.dir_fd = safe_open.open_dir(self.into, f"--into {self.into}")
        descriptors = []
        try:
            for device, label in sorted(devices):
                name = lock_name(label)
                path = os.path.join(self.into, name)
                try:
                    descriptor = safe_open.create_exclusive(name, path, self.dir_fd, 0o644)
                except FileExistsError:
                    descriptor = safe_open.open_regular(name, path, self.dir_fd)
                descriptors.append(descriptor)
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise self._busy(device, path) from None
            yield
        finally:
            for descriptor in descriptors:
                os.close(descriptor)
            self._close()

    def _close(self) -> None:
        for descriptor in self.chain_fds.values():
            os.close(descriptor)
        self.chain_fds.clear()
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None

    def _dir(self) -> int:
        if self.dir_fd is None:
            self.dir_fd = safe_open.open_dir(self.into, f"--into {self.into}")
        return self.dir_fd

    def _chain(self, chain_dir: str) -> int:
        """The chain folder ``chain_dir`` (a folder of DIR) as a descriptor: a real folder of a trusted owner."""
        descriptor = self.chain_fds.get(chain_dir)
        if descriptor is None:
            if os.path.dirname(chain_dir) != self.into:
                raise safe_open.refused(chain_dir, f"is not a folder of {self.into}")
            descriptor = safe_open.open_dir(os.path.basename(chain_dir), chain_dir, dir_fd=self._dir())
            try:
                safe_open.check_owner(descriptor, chain_dir, safe_open.trusted_owners(self._dir()))
            except BaseException:
                os.close(descriptor)
                raise
            self.chain_fds[chain_dir] = descriptor
        return descriptor

    def scan(self, deadline: Deadline) -> View:
        try:
            names = sorted(os.listdir(self._dir()))
        except FileNotFoundError:
            names = []
        chains: list[tuple[str, dict[str, Any]]] = []
        marked: set[str] = set()
        dirs: set[str] = set()
        files: dict[str, dict[str, Optional[int]]] = {}
        for name in names:
            folder = os.path.join(self.into, name)
            mode = os.stat(name, dir_fd=self._dir(), follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                if os.path.isdir(folder):
                    raise safe_open.refused(folder, "is a symbolic link to a folder, where a chain folder would be")
                continue
            if not stat.S_ISDIR(mode):
                continue
            dirs.add(name)
            try:
                os.stat(os.path.join(name, MANIFEST), dir_fd=self._dir(), follow_symlinks=False)
            except FileNotFoundError:
                continue
            marked.add(name)
            chain_fd = self._chain(folder)
            path = os.path.join(folder, MANIFEST)
            chains.append((name, parse_manifest(read_file(MANIFEST, path, dir_fd=chain_fd), path)))
            sizes: dict[str, Optional[int]] = {}
            for entry in os.listdir(chain_fd):
                info = os.stat(entry, dir_fd=chain_fd, follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    raise safe_open.refused(os.path.join(folder, entry), "is a symbolic link in a chain folder")
                sizes[entry] = info.st_size
            files[name] = sizes
        return View(frozenset(names), chains, frozenset(marked), frozenset(dirs), files)

    def _dir_of(self, name: str) -> int:
        """A folder of DIR only for a look inside it (never written through): the chain's own when opened."""
        return self._chain(os.path.join(self.into, name))

    def create(self, images: list[NewImage], deadline: Deadline) -> None:
        for image in images:
            name = os.path.basename(image.chain_dir)
            if image.make_dir:
                os.mkdir(name, dir_fd=self._dir())  # never an existing folder, nor through a link
                image.dir_made = True
                marker = safe_open.create_exclusive(NEW_CHAIN, os.path.join(image.chain_dir, NEW_CHAIN),
                                                    self._chain(image.chain_dir), flags=os.O_WRONLY)
                try:
                    os.write(marker, image.marker.encode("utf-8", "surrogateescape"))
                finally:
                    os.close(marker)
            chain_fd = self._chain(image.chain_dir)
            descriptor = safe_open.create_exclusive(os.path.basename(image.path), image.path, chain_fd)
            try:
                image.created = True
                self._owned_like_into(descriptor, chain_fd if image.dir_made else None)
                qemu_img.create(image.path, image.size, deadline, image.backing, descriptor=descriptor)
            finally:
                os.close(descriptor)

    def _owned_like_into(self, *descriptors: Optional[int]) -> None:
        safe_open.owned_like(self._dir(), *descriptors)

    def measure(self, paths: list[str], deadline: Deadline) -> list[tuple[int, str]]:
        """Every image's fsync and sha256 at once, each in a thread of its own: both wait on the disk or hash
        with the GIL let go, so the images of several disks cost about as long as the biggest one."""
        import threading

        descriptors: list[int] = []
        try:
            for path in paths:
                descriptors.append(safe_open.open_regular(os.path.basename(path), path,
                                                          self._chain(os.path.dirname(path))))
            sizes = [os.fstat(descriptor).st_size for descriptor in descriptors]
            hashes = [""] * len(descriptors)
            failures: list[BaseException] = []

            def run(step: Any, *args: Any) -> None:
                try:
                    step(*args)
                except BaseException as exc:  # noqa: BLE001 (handed to the caller's thread below)
                    failures.append(exc)

            def digest(number: int) -> None:
                hashes[number] = sha256_of_descriptor(descriptors[number])

            threads = [threading.Thread(target=run, args=(os.fsync, descriptor), daemon=True)
                       for descriptor in descriptors]
            threads += [threading.Thread(target=run, args=(digest, number), daemon=True)
                        for number in range(len(descriptors))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if failures:
                raise failures[0]
            return list(zip(sizes, hashes, strict=True))
        finally:
            for descriptor in descriptors:
                os.close(descriptor)

    def write_manifest(self, chain_dir: str, manifest: dict[str, Any], deadline: Deadline) -> None:
        data = manifest_bytes(manifest)
        chain_fd = self._chain(chain_dir)
        path = os.path.join(chain_dir, MANIFEST)
        with safe_open.replacement(MANIFEST, path, chain_fd, 0o644) as descriptor:
            safe_open.write_all(descriptor, data)
        try:
            os.unlink(NEW_CHAIN, dir_fd=chain_fd)  # the chain is born: its folder is no killed first run's
        except FileNotFoundError:
            return
        safe_open.fsync_dir(chain_fd)

    def remove_trees(self, paths: list[str], deadline: Deadline) -> list[str]:
        import shutil

        notes = []
        for path in paths:
            descriptor = self.chain_fds.pop(path, None)
            if descriptor is not None:
                os.close(descriptor)
            try:
                if os.path.dirname(path) != self.into:
                    raise safe_open.refused(path, f"is not a folder of {self.into}")
                shutil.rmtree(os.path.basename(path), dir_fd=self._dir())  # never follows a link
            except OSError as exc:
                notes.append(f"could not delete the old chain {path}: {exc.strerror or exc}")
            except QmpctlError as exc:
                notes.append(f"could not delete the old chain {path}: {exc.message}")
        return notes

    def remove_unborn(self, paths: list[str], labels: list[str], deadline: Deadline) -> list[str]:
        import shutil

        removed = []
        for path in paths:
            if os.path.dirname(path) != self.into:
                continue
            name = os.path.basename(path)
            try:  # the marker is read through the chain's folder, opened without following a link
                data = read_file(NEW_CHAIN, os.path.join(path, NEW_CHAIN), dir_fd=self._chain(path))
                os.stat(MANIFEST, dir_fd=self._chain(path), follow_symlinks=False)
                continue  # a manifest: the chain was born after all
            except FileNotFoundError:
                pass
            except (OSError, QmpctlError):
                continue
            label = data.split(b"\n", 1)[0].decode("utf-8", "surrogateescape").strip()
            if label in labels:
                descriptor = self.chain_fds.pop(path, None)
                if descriptor is not None:
                    os.close(descriptor)
                shutil.rmtree(name, dir_fd=self._dir(), ignore_errors=True)  # never follows a link
                removed.append(path)
        return removed

    def discard(self, images: list[NewImage], deadline: Deadline) -> list[str]:
        notes = []
        for image in images:
            if image.created:
                try:
                    os.unlink(os.path.basename(image.path), dir_fd=self._chain(image.chain_dir))
                    notes.append(f"removed the incomplete {image.path}")
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    notes.append(f"could not remove the incomplete {image.path}: {exc.strerror or exc}")
                except QmpctlError as exc:
                    notes.append(f"could not remove the incomplete {image.path}: {exc.message}")
                image.created = False
            if image.dir_made:
                descriptor = self.chain_fds.pop(image.chain_dir, None)
                if descriptor is not None:
                    os.close(descriptor)
                with contextlib.suppress(OSError):
                    os.unlink(NEW_CHAIN, dir_fd=self._chain(image.chain_dir))
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.basename(image.chain_dir), dir_fd=self._dir())
                image.dir_made = False
        return notes
