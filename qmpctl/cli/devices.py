"""``media insert | eject``, ``hotplug-nic``, ``unplug-nic`` and ``nics`` (declared in :mod:`qmpctl.cli.spec`).

The work happens in :mod:`qmpctl.vm.media` and :mod:`qmpctl.vm.nics`,
imported inside the commands so that other commands do not pay for them.
"""

from __future__ import annotations

from qmpctl.cli.common import Common, printed_plan, run
from qmpctl.errors import ExitCode
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Optional


def media_insert(common: Common, *, device: str, file: str, image_format: Optional[str], read_only: bool) -> int:
    from qmpctl.cli.block import _only_target_is_local
    from qmpctl.vm import media

    is_local = _only_target_is_local(common, "media insert changes one drive")
    filename, detected = media.check_medium(file, image_format, is_local=is_local)  # before anything is sent
    request = media.change_request({"id": device}, filename, detected, read_only)
    if printed_plan(common, [request], media.ID_PLAN_NOTE.format(device=device)):
        return ExitCode.OK
    return run(common, lambda session, deadline, target: media.insert(session, deadline, device, filename, detected,
                                                                      read_only), [request])


def media_eject(common: Common, *, device: str, force: bool) -> int:
    from qmpctl.vm import media

    request = media.eject_request({"id": device}, force)
    if printed_plan(common, [request], media.ID_PLAN_NOTE.format(device=device)):
        return ExitCode.OK
    return run(common, lambda session, deadline, target: media.eject(session, deadline, device, force), [request])
