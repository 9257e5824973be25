"""The reference files that keep a chain while a ``restore --instant`` overlay reads it.

``instant-<hash of the overlay's path>.json`` in the chain folder names the
overlay (its ``target``). Rotation keeps a chain that holds one; ``stream``
removes it once the overlay stands alone. No qmpctl imports: the chain run
asks this module without loading the restore side.
"""

from __future__ import annotations

import hashlib
import json
import os

from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Iterable, Optional

REFERENCE_PREFIX = "instant-"
REFERENCE_SUFFIX = ".json"


def reference_name(target: str) -> str:
    """The reference file's name in the chain folder for the overlay at ``target`` (an absolute path)."""
    digest = hashlib.sha256(os.fsencode(target)).hexdigest()[:16]
    return f"{REFERENCE_PREFIX}{digest}{REFERENCE_SUFFIX}"


def references(names: Iterable[str]) -> list[str]:
    """The reference files among a chain folder's entries: while one is there, an overlay may need the chain."""
    return sorted(name for name in names if name.startswith(REFERENCE_PREFIX) and name.endswith(REFERENCE_SUFFIX))


def release_for(former_backing: str, image: str) -> Optional[str]:
    """After ``image`` was streamed: remove the reference its chain folder kept for it; its path, or None.

    The chain folder is the one of ``former_backing`` (the point's image the
    overlay was made on); the reference is found by the overlay's real path,
    however the VM named the file.
    """
    chain_dir = os.path.dirname(former_backing)
    try:
        names = os.listdir(chain_dir)
    except OSError:
        return None
    wanted = os.path.realpath(image)
    for name in references(names):
        path = os.path.join(chain_dir, name)
        try:
            with open(path, "rb") as handle:
                recorded = json.loads(handle.read()).get("target")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(recorded, str) and os.path.realpath(recorded) == wanted:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            return path
    return None
