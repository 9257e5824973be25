"""What the agent can tell about the guest, one section per agent command, in one document.

A section whose command the agent lacks, has disabled, or refuses holds
``{"error": {"class", "desc"}}`` instead of its data, so a report is made
even from an old or locked-down agent. Only an agent that cannot be reached
(or stops answering) fails the whole call.
"""

from __future__ import annotations

from qmpctl.deadline import Deadline
from qmpctl.errors import VmError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session

if TYPE_CHECKING:
    from typing import Any

SECTIONS = (
    ("os", "guest-get-osinfo"),
    ("hostname", "guest-get-host-name"),
    ("timezone", "guest-get-timezone"),
    ("users", "guest-get-users"),
    ("filesystems", "guest-get-fsinfo"),
    ("disks", "guest-get-disks"),
    ("vcpus", "guest-get-vcpus"),
)
"""Each section of the report and the agent command behind it, in the order they are asked."""


def requests() -> list[Request]:
    return [Request(command, protocol="qga") for _, command in SECTIONS]


def guest_facts(session: Session, deadline: Deadline) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for (section, _), request in zip(SECTIONS, requests(), strict=True):
        try:
            value = session.execute(request, deadline).get("return")
        except VmError as exc:
            value = {"error": exc.to_json()}
        if section == "hostname" and isinstance(value, dict) and "host-name" in value:
            value = value["host-name"]
        report[section] = value
    return report
