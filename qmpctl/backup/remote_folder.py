"""The chain folder DIR on the host of an ``ssh://`` VM: POSIX ``sh`` scripts through that host's SSH master.

:class:`RemoteFolder` does what :class:`~qmpctl.backup.folder.LocalFolder` does
with system calls, with coreutils and util-linux's ``flock`` on the VM's host,
batched so a run costs a handful of round trips; QEMU formats the images there
(``blockdev-create``), so the host needs no qemu-img.
"""

from __future__ import annotations

import contextlib
import os

from qmpctl.backup.folder import ChainFolder, LocalFolder, NewImage, View, lock_name
from qmpctl.backup.manifest import MANIFEST, invalid, manifest_bytes, parse_manifest
from qmpctl.backup.safe_open import refused
from qmpctl.errors import JobFailed, ProtocolError, QmpctlError, UsageError, VerificationFailed
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Iterator, Optional
    from qmpctl.deadline import Deadline
    from qmpctl.wire.session import Target


BUSY_EXIT = 100
"""flock -E: the exit status when the first disk's lock is taken (the next disk's is one more); above the
sysexits codes flock uses for its own failures, below the shell's 126 and 127."""
MAX_LOCKS = 125 - BUSY_EXIT
"""Disks per run on a remote host: each needs an exit status of its own to say which one is busy."""

ENTER = """enter() {
  cd -P -- "$1" 2>/dev/null && [ "$(stat -c %d:%i .)" = "$(stat -c %d:%i -- "$1")" ] ||
    { echo "refused: $1 is a symbolic link, not a folder; qmpctl never follows one in DIR" >&2; return 1; }
  o=$(stat -c %u .) && d=$(stat -c %u -- "${1%/*}") || return 1
  case " 0 $(id -u) $d " in *" $o "*) return 0;; esac
  echo "refused: $1 belongs to user $o, not to root or to the owner of ${1%/*}" >&2
  return 1
}
"""
"""``enter FOLDER`` (a chain folder, an absolute path in DIR): cd into it, then check that the folder qmpctl is
in is the one at that name, not a link followed, and belongs to root, this user or DIR's owner. From then on
every name is used relative to it, as a folder descriptor would be: a rename of the folder cannot redirect it."""

LOCK_SCRIPT = """into=$1; shift
if [ -L "$into" ]; then echo link; exit 0; fi
if [ ! -d "$into" ]; then
  if [ -e "$into" ]; then echo notdir; exit 0; fi
  [ -d "$(dirname -- "$into")" ] || { echo noparent; exit 0; }
  mkdir -- "$into" 2>/dev/null || [ -d "$into" ] || { mkdir -- "$into"; exit 1; }
fi
cd -P -- "$into" && [ "$(stat -c %d:%i .)" = "$(stat -c %d:%i -- "$into")" ] || { echo link; exit 0; }
level=$1
shift
exec sh -c "$level" "$level" "$@"
"""
"""DIR made if only its last level is missing (never through a link), then :data:`LOCK_LEVEL` (the first
argument after DIR), run as ``sh -c LEVEL LEVEL ...``: its ``$0`` is itself, so it runs itself once per disk."""
LOCK_LEVEL = """if [ "$1" = -- ]; then shift; exec "$@"; fi
code=$1 lock=$2
shift 2
if [ ! -e "$lock" ] && [ ! -L "$lock" ]; then
  t=$(mktemp ./.lock.XXXXXXXXXX) || exit 1
  ln -T -- "$t" "$lock" 2>/dev/null
  rm -f -- "$t"
fi
if [ -L "$lock" ] || [ ! -f "$lock" ]; then echo "linklock $lock"; exit 0; fi
exec 9<"$lock" || exit 1
[ "$(stat -L -c %d:%i /dev/fd/9)" = "$(stat -c %d:%i -- "$lock")" ] || { echo "linklock $lock"; exit 0; }
exec flock -n -E "$code" /dev/fd/9 sh -c "$0" "$0" "$@"
"""
"""One disk's lock: the lock file made, when missing, by a hard link of a new ``mktemp`` file (never opening
the name, so a link planted there is never followed and nothing is created through one), then opened
read-only and checked to be the regular file at that name; ``flock -n`` then locks that open file
(``/dev/fd/9``, not the name) and runs the next level. ``--`` ends the disks: then ``HOLD``."""
HOLD = 'echo locked; (%s); exec cat >/dev/null'
"""Says the locks are held, lists DIR (:data:`SCAN_SCRIPT`, in a subshell), then keeps the locks until stdin
closes: qmpctl is done, or died and ssh with it. One remote command for both: the listing needs the lock."""

SCAN_SCRIPT = """export LC_ALL=C
cd -- "$1" || exit 1
trusted=" 0 $(id -u) $(stat -c %u .) "
for d in * .[!.]* ..?*; do
  [ -e "$d" ] || [ -L "$d" ] || continue
  printf 'N\\0%s\\0' "$d"
  if [ -L "$d" ]; then
    [ -d "$d" ] && printf 'L\\0%s\\0' "$d"
    continue
  fi
  [ -d "$d" ] || continue
  printf 'D\\0%s\\0' "$d"
  m="$d/chain.json"
  [ -e "$m" ] || [ -L "$m" ] || continue
  printf 'H\\0%s\\0' "$d"
  o=$(stat -c %u -- "$d") || continue
  case $trusted in *" $o "*) ;; *) printf 'O\\0%s\\0%s\\0' "$d" "$o"; continue;; esac
  [ -f "$m" ] && [ ! -L "$m" ] || continue
  c=$(cat -- "$m" && echo x) || continue
  c=${c%x}
  printf 'M\\0%s\\0%s\\0%s' "$d" "${#c}" "$c"
  (cd -- "$d" || exit 0
   for f in * .[!.]* ..?*; do
     if [ -L "$f" ]; then printf 'K\\0%s\\0' "$f"; elif [ -e "$f" ]; then printf 'F\\0%s\\0' "$f"; fi
   done
   stat --printf 'S\\0%n\\0%s\\0' -- * .[!.]* ..?* 2>/dev/null)
  printf 'E\\0'
done
printf 'Z\\0'
"""
"""Every entry of DIR (N), folders (D), links to folders (L: refused), those with a chain.json (H), a chain
folder of an untrusted owner (O: refused), readable manifests (M: name, length, content) and then their
entries (F: name; K: a link, refused) and sizes (S: name, size; none where stat fails) up to E; Z ends the
listing. NUL-separated: any name survives (a manifest cannot hold a NUL: the shell drops them)."""

CREATE_SCRIPT = ENTER + """into=$1
shift
own=$(stat -c %u:%g -- "$into") || exit 1
mine=no
[ "$(id -u)" = 0 ] && [ "$own" != 0:0 ] && mine=yes
while [ $# -ge 4 ]; do
  new=$1 dir=$2 name=$3 marker=$4
  shift 4
  if [ "$new" = 1 ]; then
    mkdir -- "$dir" || exit 1
    echo dir
  fi
  enter "$dir" || { echo refused; exit 0; }
  if [ "$new" = 1 ] && [ "$mine" = yes ]; then chown -- "$own" . || exit 1; fi
  if [ "$new" = 1 ]; then (umask 077; set -C; printf '%s' "$marker" >.qmpctl-new-chain) || exit 1; fi
  if [ -e "$name" ] || [ -L "$name" ]; then echo exists; exit 0; fi
  t=$(mktemp ./.new.XXXXXXXXXX) || exit 1
  if ! ln -T -- "$t" "$name" 2>/dev/null; then rm -f -- "$t"; echo exists; exit 0; fi
  rm -f -- "$t"
  echo image
  [ "$mine" = no ] || chown -h -- "$own" "$name" || exit 1
  cd / || exit 1
done
"""
"""Per image: its folder if new (with its new-chain marker first, created exclusively), then the image, empty
and exclusively: a hard link of a new ``mktemp`` file,
made in the checked folder (never over a name that exists, a link included, and never through one); owned
like DIR when root makes them (QEMU may run as DIR's owner). One line per step done, for the taking back."""

MEASURE_SCRIPT = ENTER + """while [ $# -ge 2 ]; do
  dir=$1 name=$2
  shift 2
  (enter "$dir" || exit 1
   if [ -L "$name" ] || [ ! -f "$name" ]; then
     echo "refused: $dir/$name is a symbolic link or not a regular file" >&2; exit 1
   fi
   exec 3<"$name" || exit 1
   [ "$(stat -L -c %d:%i /dev/fd/3)" = "$(stat -c %d:%i -- "$name")" ] ||
     { echo "refused: $dir/$name was replaced while it was read" >&2; exit 1; }
   sync -- /dev/fd/3 && stat -L -c %s /dev/fd/3 && sha256sum <&3) || exit 1
done
"""
MANIFEST_SCRIPT = ENTER + """dir=$1 length=$2
enter "$dir" || exit 1
temporary=$(mktemp -u ./.chain.json.XXXXXXXXXX) || exit 1
if (set -C; cat >"$temporary") && [ "$(stat -c %s -- "$temporary")" = "$length" ] && sync -- "$temporary" &&
   mv -f -T -- "$temporary" chain.json && rm -f -- .qmpctl-new-chain && sync -- .; then
  exit 0
fi
rm -f -- "$temporary"
echo "the manifest did not arrive whole, or could not be written; the old one is kept" >&2
exit 1
"""
"""Temp file (an unpredictable name, created exclusively: noclobber is O_EXCL), fsync, rename (over a link,
never through it), fsync the folder. The length is checked first: stdin also ends when qmpctl or its
connection dies, and a cut manifest must never replace a whole one."""
REMOVE_UNBORN_SCRIPT = ENTER + """labels=$1; shift
for d; do
  (enter "$d" 2>/dev/null || exit 1
   [ -f .qmpctl-new-chain ] && [ ! -L .qmpctl-new-chain ] && [ ! -e chain.json ] && [ ! -L chain.json ] || exit 1
   IFS= read -r label <.qmpctl-new-chain || [ -n "$label" ] || exit 1
   case " $labels " in *" $label "*) exit 0;; esac
   exit 1) && rm -rf -- "$d" && printf '%s\\0' "$d"
done
exit 0
"""
"""The folders of killed first runs of these disks (labels: space-separated, none has a space), checked from
inside (never through a link), then removed: NUL-ended."""
REMOVE_TREES_SCRIPT = """for p; do rm -rf -- "$p" 2>&1 || echo; done; exit 0"""
DISCARD_SCRIPT = ENTER + """while [ $# -ge 3 ]; do
  image=$1 made=$2 dir=$3
  shift 3
  if [ -n "$image" ] && { [ -e "$image" ] || [ -L "$image" ]; }; then
    if rm -f -- "$image"; then echo removed; else echo failed; fi
  else
    echo gone
  fi
  [ "$made" = 1 ] && (enter "$dir" 2>/dev/null && rm -f -- .qmpctl-new-chain) && rmdir -- "$dir" 2>/dev/null
done
exit 0
"""
"""``rm`` and ``rmdir`` remove a link itself, never what it points to."""


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
            if said.startswith("refused: "):
                raise VerificationFailed(f"{said} (on {self.host})")
            raise JobFailed(f"could not {what} on {self.host}: {said}")
        out: bytes = done.stdout
        return out

    @contextlib.contextmanager
    def lock(self, devices: list[tuple[str, str]], deadline: Deadline) -> Iterator[None]:
        ordered = sorted(devices)
        if len(ordered) > MAX_LOCKS:
            raise UsageError(f"at most {MAX_LOCKS} disks per run into a DIR on another host (got {len(ordered)})")
        command: list[str] = [LOCK_LEVEL]
        for number, (_, label) in enumerate(ordered):
            command += [str(BUSY_EXIT + number), lock_name(label)]
        command += ["--", "sh", "-c", HOLD % SCAN_SCRIPT, "sh", "."]
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
        if held.line == "link":
            raise refused(self.where(self.into), "is a symbolic link, not a folder")
        if held.line.startswith("linklock "):
            raise refused(self.where(os.path.join(self.into, held.line.split(" ", 1)[1])),
                          "is a symbolic link or not a regular file, where a lock file must be")
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
            args += ["1" if image.make_dir else "0", image.chain_dir, os.path.basename(image.path), image.marker]
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
            elif step == "refused":
                raise VerificationFailed(f"{_last_line(done.stderr)} (on {self.host})")
        if done.returncode != 0 or pending:
            said = _last_line(done.stderr) or f"exit status {done.returncode}"
            raise JobFailed(f"could not create {self.where(pending[0].path if pending else self.into)}: {said}")

    def measure(self, paths: list[str], deadline: Deadline) -> list[tuple[int, str]]:
        args = [part for path in paths for part in os.path.split(path)]
        out = self._run(MEASURE_SCRIPT, args, deadline, "read the new images").decode("utf-8", "replace")
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
            elif kind == b"L":
                raise refused(f"{os.path.join(into, text(field()))}{side}",
                              "is a symbolic link to a folder, where a chain folder would be")
            elif kind == b"O":
                name, owner = text(field()), text(field())
                raise refused(f"{os.path.join(into, name)}{side}",
                              f"belongs to user {owner}, not to root or to the owner of {into}")
            elif kind == b"M":
                name, length = text(field()), int(field())
                if len(out) < position + length:
                    raise _Incomplete
                content, position = out[position:position + length], position + length
                sizes: dict[str, Optional[int]] = {}
                while (kind := field()) in (b"F", b"S", b"K"):
                    entry = text(field())
                    if kind == b"K":
                        raise refused(f"{os.path.join(into, name, entry)}{side}",
                                      "is a symbolic link in a chain folder")
                    sizes[entry] = int(field()) if kind == b"S" else sizes.get(entry)
                if kind != b"E":
                    raise ValueError(kind)
                chains.append((name, parse_manifest(content, f"{os.path.join(into, name, MANIFEST)}{side}")))
                files[name] = sizes
            else:
                raise ValueError(kind)
    except _Incomplete:
        return None
    except ValueError:
        raise ProtocolError(f"the listing of {into}{side} could not be read (is its shell a POSIX sh, "
                            "with GNU coreutils' stat?)") from None
    unread = sorted(marked - {name for name, _ in chains})
    if unread:
        raise invalid(f"{os.path.join(into, unread[0], MANIFEST)}{side}", "it is not a regular file qmpctl can read")
    chains.sort(key=lambda chain: chain[0])
    return View(frozenset(names), chains, frozenset(marked), frozenset(dirs), files)


def folder_for(target: Target, into: str) -> ChainFolder:
    """DIR where the VM's QEMU is: on its SSH host for an ``ssh://`` target, else here."""
    files = target.host_files().remote()
    if files is not None:
        return RemoteFolder(into, files)
    return LocalFolder(into)
