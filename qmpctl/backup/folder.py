"""The chain folder DIR of ``backup --into``, on this host or on the VM's host over SSH.

:mod:`qmpctl.backup.chain` decides; a folder does the file-system work: lock the
disks, read what DIR holds, create the new images, record them, rotate old
chains, take back an incomplete image. :class:`LocalFolder` does it with
system calls. :class:`RemoteFolder` does the same on the host of an
``ssh://`` VM with POSIX ``sh`` scripts (coreutils, util-linux's ``flock``)
through that host's SSH master, batched so a run costs a handful of round
trips; QEMU formats the images there (``blockdev-create``), so the host needs
no qemu-img. Paths in messages say which side they are on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

from qmpctl.backup import qemu_img
from qmpctl.errors import Busy, JobFailed, ProtocolError, QmpctlError, UsageError
from qmpctl.records import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Any, Iterator, Optional
    from qmpctl.deadline import Deadline

MANIFEST = "chain.json"
NEW_CHAIN = ".qmpctl-new-chain"
"""Written first into a chain's new folder, removed with the first manifest: its first line is the disk's label,
the rest names the run. A folder with it and no manifest is a killed first run's, which the next run of that disk
removes."""
HASH_CHUNK = 1 << 20


def lock_name(label: str) -> str:
    """The lock file of one disk in DIR (``label`` is the disk's name made file-safe)."""
    return f".{label}.lock"


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """A manifest's content as a dict; :class:`UsageError` naming ``where`` when it is not one."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise UsageError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("images"), list):
        raise UsageError(f"{where} is not a qmpctl chain manifest")
    return manifest


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2) + "\n").encode("utf-8")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class View(NamedTuple):
    """What DIR held when the run looked, under the disks' locks: enough to plan without looking again."""

    names: frozenset[str]
    """Every entry of DIR."""
    chains: list[tuple[str, dict[str, Any]]]
    """(name, manifest) of each folder with a valid manifest, sorted by name (oldest first)."""
    marked: frozenset[str]
    """Folders with something at chain.json (valid or not): a chain, not one whose first run was killed."""
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
            if not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as handle:
                    manifest = parse_manifest(handle.read(), path)
            except (OSError, UsageError):
                continue
            chains.append((name, manifest))
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
                marker = os.open(os.path.join(image.chain_dir, NEW_CHAIN), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(marker, image.marker.encode("utf-8", "surrogateescape"))
                finally:
                    os.close(marker)
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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(chain_dir, NEW_CHAIN))
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

    def remove_unborn(self, paths: list[str], labels: list[str], deadline: Deadline) -> list[str]:
        import shutil

        removed = []
        for path in paths:
            try:
                with open(os.path.join(path, NEW_CHAIN), "rb") as handle:
                    label = handle.readline().decode("utf-8", "surrogateescape").strip()
            except OSError:
                continue
            if label in labels and not os.path.lexists(os.path.join(path, MANIFEST)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

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
                    os.unlink(os.path.join(image.chain_dir, NEW_CHAIN))
                with contextlib.suppress(OSError):
                    os.rmdir(image.chain_dir)
                image.dir_made = False
        return notes


# -- the VM's host, over SSH ------------------------------------------------------------------------

BUSY_EXIT = 100
"""flock -E: the exit status when the first disk's lock is taken (the next disk's is one more); above the
sysexits codes flock uses for its own failures, below the shell's 126 and 127."""
MAX_LOCKS = 125 - BUSY_EXIT
"""Disks per run on a remote host: each needs an exit status of its own to say which one is busy."""

LOCK_SCRIPT = """into=$1; shift
if [ ! -d "$into" ]; then
  if [ -e "$into" ] || [ -L "$into" ]; then echo notdir; exit 0; fi
  [ -d "$(dirname -- "$into")" ] || { echo noparent; exit 0; }
  mkdir -- "$into" 2>/dev/null || [ -d "$into" ] || { mkdir -- "$into"; exit 1; }
fi
cd -- "$into" && exec "$@"
"""
"""DIR made if only its last level is missing, then ``flock -n`` nested once per disk around ``HOLD``."""
HOLD = 'echo locked; (%s); exec cat >/dev/null'
"""Says the locks are held, lists DIR (:data:`SCAN_SCRIPT`, in a subshell), then keeps the locks until stdin
closes: qmpctl is done, or died and ssh with it. One remote command for both: the listing needs the lock."""

SCAN_SCRIPT = """export LC_ALL=C
cd -- "$1" || exit 1
for d in * .[!.]* ..?*; do
  [ -e "$d" ] || [ -L "$d" ] || continue
  printf 'N\\0%s\\0' "$d"
  [ -d "$d" ] || continue
  printf 'D\\0%s\\0' "$d"
  m="$d/chain.json"
  [ -e "$m" ] || [ -L "$m" ] || continue
  printf 'H\\0%s\\0' "$d"
  [ -f "$m" ] || continue
  c=$(cat -- "$m" && echo x) || continue
  c=${c%x}
  printf 'M\\0%s\\0%s\\0%s' "$d" "${#c}" "$c"
  (cd -- "$d" || exit 0
   for f in * .[!.]* ..?*; do if [ -e "$f" ] || [ -L "$f" ]; then printf 'F\\0%s\\0' "$f"; fi; done
   stat -L --printf 'S\\0%n\\0%s\\0' -- * .[!.]* ..?* 2>/dev/null)
  printf 'E\\0'
done
printf 'Z\\0'
"""
"""Every entry of DIR (N), folders (D), those with a chain.json (H), readable manifests (M: name, length,
content) and then their entries (F: name) and sizes (S: name, size; none where stat fails) up to E; Z ends
the listing. NUL-separated: any name survives (a manifest cannot hold a NUL: the shell drops them)."""

CREATE_SCRIPT = """own=$(stat -c %u:%g -- "$1") || exit 1
shift
mine=no
[ "$(id -u)" = 0 ] && [ "$own" != 0:0 ] && mine=yes
while [ $# -ge 4 ]; do
  new=$1 dir=$2 image=$3 marker=$4
  shift 4
  if [ "$new" = 1 ]; then
    mkdir -- "$dir" || exit 1
    echo dir
    [ "$mine" = no ] || chown -- "$own" "$dir" || exit 1
    (umask 077; set -C; printf '%s' "$marker" >"$dir/.qmpctl-new-chain") || exit 1
  fi
  if [ -e "$image" ] || [ -L "$image" ]; then echo exists; exit 0; fi
  (umask 077; set -C; : >"$image") || exit 1
  echo image
  [ "$mine" = no ] || chown -- "$own" "$image" || exit 1
done
"""
"""Per image: its folder if new (with its :data:`NEW_CHAIN` first), then the image, empty and exclusively
(noclobber: O_EXCL); owned like DIR when root makes them (QEMU may run as DIR's owner). One line per step done,
for the taking back."""

MEASURE_SCRIPT = """for image; do
  sync -- "$image" && stat -L -c %s -- "$image" && sha256sum <"$image" || exit 1
done
"""
MANIFEST_SCRIPT = """dir=$1 length=$2
temporary="$dir/chain.json.tmp-$$"
if cat >"$temporary" && [ "$(stat -c %s -- "$temporary")" = "$length" ] && sync -- "$temporary" &&
   mv -f -- "$temporary" "$dir/chain.json" && rm -f -- "$dir/.qmpctl-new-chain" && sync -- "$dir"; then
  exit 0
fi
rm -f -- "$temporary"
echo "the manifest did not arrive whole, or could not be written; the old one is kept" >&2
exit 1
"""
"""Temp file, fsync, rename, fsync the folder. The length is checked first: stdin also ends when qmpctl
or its connection dies, and a cut manifest must never replace a whole one."""
REMOVE_UNBORN_SCRIPT = """labels=$1; shift
for d; do
  [ -f "$d/.qmpctl-new-chain" ] && [ ! -e "$d/chain.json" ] && [ ! -L "$d/chain.json" ] || continue
  IFS= read -r label <"$d/.qmpctl-new-chain" || [ -n "$label" ] || continue
  case " $labels " in *" $label "*) rm -rf -- "$d" && printf '%s\\0' "$d";; esac
done
exit 0
"""
"""The folders of killed first runs of these disks (labels: space-separated, none has a space): NUL-ended."""
REMOVE_TREES_SCRIPT = """for p; do rm -rf -- "$p" 2>&1 || echo; done; exit 0"""
DISCARD_SCRIPT = """while [ $# -ge 3 ]; do
  image=$1 made=$2 dir=$3
  shift 3
  if [ -n "$image" ] && { [ -e "$image" ] || [ -L "$image" ]; }; then
    if rm -f -- "$image"; then echo removed; else echo failed; fi
  else
    echo gone
  fi
  [ "$made" = 1 ] && rm -f -- "$dir/.qmpctl-new-chain" && rmdir -- "$dir" 2>/dev/null
done
exit 0
"""


def _last_line(text: bytes) -> str:
    lines = [line.strip() for line in text.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


class RemoteFolder(ChainFolder):
    """DIR on the host of an ``ssh://`` VM: sh scripts through that host's SSH master."""

    formats_images = False

    def __init__(self, into: str, files: Any) -> None:
        super().__init__(into)
        self.master = files.master
        self.host = str(files.host)
        self.side = f" {files.side}"
        self.view: Optional[View] = None
        """DIR as listed under the lock, while it is held."""

    def _run(self, script: str, args: list[str], deadline: Deadline, what: str,
             data: Optional[bytes] = None) -> bytes:
        """A script whose failure is the run's failure: exit 6 with what the host said."""
        done = self.master.run(script, args, deadline, what, data)
        if done.returncode != 0:
            said = _last_line(done.stderr) or f"exit status {done.returncode}"
            raise JobFailed(f"could not {what} on {self.host}: {said}")
        out: bytes = done.stdout
        return out

    @contextlib.contextmanager
    def lock(self, devices: list[tuple[str, str]], deadline: Deadline) -> Iterator[None]:
        ordered = sorted(devices)
        if len(ordered) > MAX_LOCKS:
            raise UsageError(f"at most {MAX_LOCKS} disks per run into a DIR on another host (got {len(ordered)})")
        command: list[str] = []
        for number, (_, label) in enumerate(ordered):
            command += ["flock", "-n", "-E", str(BUSY_EXIT + number), lock_name(label)]
        command += ["sh", "-c", HOLD % SCAN_SCRIPT, "sh", "."]
        held = self.master.hold(LOCK_SCRIPT, [self.into, *command], deadline,
                                f"lock {', '.join(device for device, _ in ordered)} in {self.into}")
        try:
            self._judge_lock(held, ordered, deadline)
            while (view := _parse_scan(held.rest, self.into, self.side)) is None:
                if not held.read_more(deadline):
                    raise ProtocolError(f"the listing of {self.where(self.into)} ended early")
            self.view = view
            yield
        finally:
            self.view = None
            held.release()

    def _judge_lock(self, held: Any, ordered: list[tuple[str, str]], deadline: Deadline) -> None:
        if held.line == "locked":
            return
        if held.line == "notdir":
            raise UsageError(f"--into {self.where(self.into)}: it exists and is not a directory")
        if held.line == "noparent":
            raise UsageError(f"--into {self.where(self.into)}: the directory {os.path.dirname(self.into)} "
                             "does not exist")
        code, stderr = held.ended(deadline)
        if BUSY_EXIT <= code < BUSY_EXIT + len(ordered):
            device, label = ordered[code - BUSY_EXIT]
            raise self._busy(device, os.path.join(self.into, lock_name(label)))
        said = _last_line(stderr.encode()) or held.line or f"exit status {code}"
        raise JobFailed(f"could not lock {self.where(self.into)}: {said} (the host needs flock, from util-linux)")

    def scan(self, deadline: Deadline) -> View:
        """What the lock's command listed; without the lock, one command of its own."""
        if self.view is not None:
            return self.view
        view = _parse_scan(self._run(SCAN_SCRIPT, [self.into], deadline, f"list {self.into}"), self.into,
                           self.side)
        if view is None:
            raise ProtocolError(f"the listing of {self.where(self.into)} ended early")
        return view

    def create(self, images: list[NewImage], deadline: Deadline) -> None:
        args = [self.into]
        for image in images:
            args += ["1" if image.make_dir else "0", image.chain_dir, image.path, image.marker]
        done = self.master.run(CREATE_SCRIPT, args, deadline, "create the chain's images")
        steps = done.stdout.decode("utf-8", "replace").split()
        pending = list(images)
        for step in steps:  # what was done, in order: the taking back must know it even after a failure
            image = pending[0]
            if step == "dir":
                image.dir_made = True
            elif step == "image":
                image.created = True
                pending.pop(0)
            elif step == "exists":
                raise UsageError(f"{self.where(image.path)} exists; qmpctl never overwrites a backup")
        if done.returncode != 0 or pending:
            said = _last_line(done.stderr) or f"exit status {done.returncode}"
            raise JobFailed(f"could not create {self.where(pending[0].path if pending else self.into)}: {said}")

    def measure(self, paths: list[str], deadline: Deadline) -> list[tuple[int, str]]:
        out = self._run(MEASURE_SCRIPT, paths, deadline, "read the new images").decode("utf-8", "replace")
        words = out.split()
        if len(words) != 3 * len(paths):
            raise ProtocolError(f"{self.host} answered the images' size and sha256 with {out[:200]!r}")
        return [(int(words[3 * number]), words[3 * number + 1]) for number in range(len(paths))]

    def write_manifest(self, chain_dir: str, manifest: dict[str, Any], deadline: Deadline) -> None:
        data = manifest_bytes(manifest)
        self._run(MANIFEST_SCRIPT, [chain_dir, str(len(data))], deadline,
                  f"write {os.path.join(chain_dir, MANIFEST)}", data)

    def remove_trees(self, paths: list[str], deadline: Deadline) -> list[str]:
        if not paths:
            return []
        out = self._run(REMOVE_TREES_SCRIPT, paths, deadline, "delete old chains")
        said = _last_line(out)
        return [f"could not delete every old chain of {', '.join(paths)}{self.side}: {said}"] if said else []

    def remove_unborn(self, paths: list[str], labels: list[str], deadline: Deadline) -> list[str]:
        if not paths:
            return []
        out = self._run(REMOVE_UNBORN_SCRIPT, [" ".join(labels), *paths], deadline, "remove killed first runs")
        return [text for text in out.decode("utf-8", "surrogateescape").split("\0") if text]

    def discard(self, images: list[NewImage], deadline: Deadline) -> list[str]:
        args: list[str] = []
        for image in images:
            args += [image.path if image.created else "", "1" if image.dir_made else "0", image.chain_dir]
        if not any(image.created or image.dir_made for image in images):
            return []
        try:
            out = self._run(DISCARD_SCRIPT, args, deadline, "remove the incomplete images").decode()
        except QmpctlError as exc:
            return [f"could not remove the incomplete {self.where(image.path)}: {exc.message}"
                    for image in images if image.created]
        notes = []
        for image, outcome in zip(images, out.split(), strict=False):
            if outcome == "removed":
                notes.append(f"removed the incomplete {self.where(image.path)}")
            elif outcome == "failed":
                notes.append(f"could not remove the incomplete {self.where(image.path)}")
            image.created = image.dir_made = False
        return notes


class _Incomplete(Exception):
    """The listing so far stops inside a record: more is coming."""


def _parse_scan(out: bytes, into: str, side: str) -> Optional[View]:
    """The NUL-separated records of :data:`SCAN_SCRIPT` as a :class:`View`; None while the Z record has not come."""
    names: set[str] = set()
    dirs: set[str] = set()
    marked: set[str] = set()
    chains: list[tuple[str, dict[str, Any]]] = []
    files: dict[str, dict[str, Optional[int]]] = {}
    position = 0

    def field() -> bytes:
        nonlocal position
        end = out.find(b"\0", position)
        if end < 0:
            raise _Incomplete
        value, position = out[position:end], end + 1
        return value

    def text(value: bytes) -> str:
        return value.decode("utf-8", "surrogateescape")

    try:
        while (kind := field()) != b"Z":
            if kind == b"N":
                names.add(text(field()))
            elif kind == b"D":
                dirs.add(text(field()))
            elif kind == b"H":
                marked.add(text(field()))
            elif kind == b"M":
                name, length = text(field()), int(field())
                if len(out) < position + length:
                    raise _Incomplete
                content, position = out[position:position + length], position + length
                sizes: dict[str, Optional[int]] = {}
                while (kind := field()) in (b"F", b"S"):
                    entry = text(field())
                    sizes[entry] = int(field()) if kind == b"S" else sizes.get(entry)
                if kind != b"E":
                    raise ValueError(kind)
                try:
                    chains.append((name, parse_manifest(content, f"{os.path.join(into, name, MANIFEST)}{side}")))
                except UsageError:
                    continue
                files[name] = sizes
            else:
                raise ValueError(kind)
    except _Incomplete:
        return None
    except ValueError:
        raise ProtocolError(f"the listing of {into}{side} could not be read (is its shell a POSIX sh, "
                            "with GNU coreutils' stat?)") from None
    chains.sort(key=lambda chain: chain[0])
    return View(frozenset(names), chains, frozenset(marked), frozenset(dirs), files)


def folder_for(target: object, into: str) -> ChainFolder:
    """DIR where the VM's QEMU is: on its SSH host for an ``ssh://`` target, else here."""
    from qmpctl.wire.ssh import remote_files

    files = remote_files(target)
    if files is not None:
        return RemoteFolder(into, files)
    return LocalFolder(into)
