"""A chain's manifest, ``chain.json``: read, written and hashed.

A manifest is data from disk, in a folder the QEMU user may write to: it is
read as bytes and parsed by the callers of :func:`parse_manifest`.
"""

from __future__ import annotations

import hashlib
import json
import os

from qmpctl.errors import UsageError
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Optional

MANIFEST = "chain.json"
MANIFEST_VERSION = 1
HASH_CHUNK = 1 << 20


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


def read_manifest(chain_dir: str) -> dict[str, Any]:
    path = os.path.join(chain_dir, MANIFEST)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_manifest(data, path)


def chains_of(into: str, device: Optional[str] = None) -> list[tuple[str, dict[str, Any]]]:
    """The chains in ``into`` (of ``device``, as the user named it), oldest first."""
    found = []
    try:
        names = sorted(os.listdir(into))
    except FileNotFoundError:
        return []
    for name in names:
        chain_dir = os.path.join(into, name)
        if not os.path.isfile(os.path.join(chain_dir, MANIFEST)):
            continue
        try:
            manifest = read_manifest(chain_dir)
        except UsageError:
            continue
        if device is None or manifest.get("device") == device:
            found.append((chain_dir, manifest))
    return found
