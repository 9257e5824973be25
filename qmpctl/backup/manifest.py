"""A chain's manifest, ``chain.json``: read, checked, written and hashed.

A manifest is data from disk, in a folder the QEMU user may write to: every
read checks it against ``schemas/chain.json`` (with qmpctl's own validator,
:mod:`qmpctl.wire.schema`) and against the chain's naming (image N is
``000N-full.qcow2`` for the full backup, ``000N-inc.qcow2`` after it) before
anything in it is used. One that does not match is exit 6
(:class:`~qmpctl.errors.VerificationFailed`) naming the file and the first
problem; every write is checked the same way first.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os

from qmpctl.backup import safe_open
from qmpctl.errors import UsageError, VerificationFailed
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire import schema

if TYPE_CHECKING:
    from typing import Any, Optional

MANIFEST = "chain.json"
MANIFEST_VERSION = 2
"""2: a bitmap per backup, named in each image's entry; 1 (one bitmap for the whole chain) is read, never extended."""
SCHEMA = "chain"
"""``schemas/chain.json``: the manifest's form, for the version it names."""
MAX_MANIFEST_BYTES = 16 << 20
"""Far above what any chain writes (about 300 bytes per image); a bigger file is not a manifest."""
HASH_CHUNK = 4 << 20


def manifest_problems(manifest: Any) -> list[str]:
    """Why ``manifest`` is not a valid chain manifest (empty when it is one)."""
    problems = schema.errors(schema.load_schema(SCHEMA), manifest)
    if problems:
        return problems
    for number, entry in enumerate(manifest["images"], 1):
        full = number == 1
        expected = f"{number:04d}-{'full' if full else 'inc'}.qcow2"
        if entry["file"] != expected:
            return [f"images[{number - 1}].file: the chain's image {number} must be {expected}, "
                    f"got {json.dumps(entry['file'])}"]
        if entry["level"] != ("full" if full else "incremental"):
            return [f"images[{number - 1}].level: image {number} of a chain is "
                    f"{'the full backup' if full else 'an incremental'}, got {json.dumps(entry['level'])}"]
    return []


def invalid(where: str, problem: str) -> VerificationFailed:
    return VerificationFailed(f"{where} is not a valid qmpctl chain manifest (version {MANIFEST_VERSION}): "
                              f"{problem}; qmpctl uses nothing in it (move the chain's folder away to go on)")


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """A manifest's content as a dict, checked; :class:`VerificationFailed` (exit 6) naming ``where`` if not."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise invalid(where, f"it is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise invalid(where, f"not JSON ({exc})") from None
    except RecursionError:
        raise invalid(where, "not JSON (nested too deeply)") from None
    problems = manifest_problems(manifest)
    if problems:
        raise invalid(where, problems[0])
    result: dict[str, Any] = manifest
    return result


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """What :func:`parse_manifest` reads back; a manifest that would not pass is never written."""
    problems = manifest_problems(manifest)
    if problems:
        raise VerificationFailed(f"qmpctl refused to write a chain manifest that does not match its schema: "
                                 f"{problems[0]}")
    return (json.dumps(manifest, indent=2) + "\n").encode("utf-8")


def sha256_of(path: str) -> str:
    """The sha256 of the regular file ``path``, opened without following a link at its last component."""
    descriptor = safe_open.open_regular(path, path, None)
    try:
        return sha256_of_descriptor(descriptor)
    finally:
        os.close(descriptor)


def sha256_of_descriptor(descriptor: int) -> str:
    """The sha256 of the file open at ``descriptor``, read with pread into one buffer (the file offset is left
    alone, so other threads may use the descriptor; hashlib lets go of the GIL while it hashes)."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    offset = 0
    while length := os.preadv(descriptor, [buffer], offset):
        digest.update(view[:length])
        offset += length
    return digest.hexdigest()


def read_file(path: str, where: str, *, dir_fd: Optional[int] = None) -> bytes:
    """The bytes of the manifest at ``path`` (relative to ``dir_fd`` when given), never through a symbolic
    link, a FIFO or a device: :class:`VerificationFailed` naming ``where`` for anything but a regular file."""
    try:
        descriptor = safe_open.open_regular(path, where, dir_fd)
    except VerificationFailed as exc:
        raise invalid(where, "it " + exc.message.removeprefix(f"refused: {where} ").split(";")[0]) from None
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise UsageError(f"cannot read {where}: {exc.strerror or exc}") from None
        raise invalid(where, f"it cannot be read ({exc.strerror or exc})") from None
    try:
        chunks = []
        left = MAX_MANIFEST_BYTES + 1
        while left > 0 and (chunk := os.read(descriptor, min(left, HASH_CHUNK))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise invalid(where, f"it cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(descriptor)


def read_manifest(chain_dir: str) -> dict[str, Any]:
    path = os.path.join(chain_dir, MANIFEST)
    return parse_manifest(read_file(path, path), path)


def chains_of(into: str, device: Optional[str] = None) -> list[tuple[str, dict[str, Any]]]:
    """The chains in ``into`` (of ``device``, as the user named it), oldest first; exit 6 at a broken manifest."""
    found = []
    try:
        names = sorted(os.listdir(into))
    except FileNotFoundError:
        return []
    for name in names:
        chain_dir = os.path.join(into, name)
        if os.path.islink(chain_dir) and os.path.isdir(chain_dir):
            raise safe_open.refused(chain_dir, "is a symbolic link to a folder, where a chain folder would be")
        if not os.path.lexists(os.path.join(chain_dir, MANIFEST)):
            continue
        manifest = read_manifest(chain_dir)
        if device is None or manifest.get("device") == device:
            found.append((chain_dir, manifest))
    return found
