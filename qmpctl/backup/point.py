"""One backup point of a chain, verified before anything reads it: what serve, instant and files start from."""

from __future__ import annotations

import os

from qmpctl.backup.restore import resolve_point
from qmpctl.deadline import Deadline
from qmpctl.records import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Any, Optional


class Point(NamedTuple):
    """Backup ``number`` of the chain in ``chain_dir``: its image reads the disk as it was then."""

    chain_dir: str
    number: int
    points: int
    image: str
    """The absolute path of the point's image (the top of the backing chain to read)."""
    entry: dict[str, Any]
    device: Optional[str]
    size: int

    def summary(self) -> dict[str, Any]:
        return {"chain": self.chain_dir, "point": self.number, "points": self.points,
                "level": self.entry.get("level"), "started": self.entry.get("started"), "image": self.image,
                "device": self.device}


def verified_point(chain: str, deadline: Deadline, *, point: Optional[int] = None,
                   at: Optional[str] = None, checksums: bool = True) -> Point:
    """The point ``--point``/``--at`` names (the latest by default), after verifying every image it needs.

    :raise VerificationFailed: an image up to that point is missing, changed or broken (exit 6).
    """
    chain_dir, manifest, number = resolve_point(chain, deadline, point, at, checksums=checksums)
    entry = manifest["images"][number - 1]
    device = manifest.get("device")
    return Point(chain_dir, number, len(manifest["images"]), os.path.join(chain_dir, str(entry["file"])), entry,
                 None if device is None else str(device), int(manifest.get("size") or 0))
