"""Targets: what a command runs against, whatever stands behind it.

A target opens a *session* with ``execute(request, deadline)``. For a socket
that is a :class:`~qmpctl.wire.qmp.QmpSession` or :class:`~qmpctl.wire.agent.AgentSession`;
for ``--domain`` it is libvirt (imported only then), so every command works
the same way through either. The contracts (:class:`Session`, :class:`Target`)
live in :mod:`qmpctl.wire.session`, which libvirt's sessions import without
importing this module; they are re-exported here for the callers that pick targets.
"""

from __future__ import annotations

from qmpctl.wire.address import Address
from qmpctl.wire.connect import expand_addresses
from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.wire.session import AGENT, HERE, MONITOR, OVER_SSH, UNREACHABLE, HostFiles, Session, Target

if TYPE_CHECKING:
    from typing import Any, Callable

    Action = Callable[[Session, Deadline, Target], Any]

__all__ = ["AGENT", "MONITOR", "HostFiles", "Session", "SocketTarget", "Target", "resolve_targets",
           "written_targets"]


class SocketTarget(NamedTuple):
    """A QMP monitor or guest-agent socket qmpctl connects to itself (a NamedTuple: cheap to import)."""

    address: Address
    kind: str = MONITOR

    def open(self, deadline: Deadline) -> Session:
        if self.kind == AGENT:
            from qmpctl.wire.agent import AgentSession

            return AgentSession.connect(self.address, deadline)
        from qmpctl.wire.qmp import QmpSession

        return QmpSession.connect(self.address, deadline)

    def host_files(self) -> HostFiles:
        """Here for a unix socket or a loopback TCP port; over ssh for ``ssh://``; else out of reach."""
        address = self.address
        if address.via is not None:
            return HostFiles(OVER_SSH, address.via)
        if address.is_unix or address.host in ("localhost", "127.0.0.1", "::1") or bool(
                address.host and address.host.startswith("127.")):
            return HostFiles(HERE)
        return HostFiles(UNREACHABLE)

    @property
    def is_local(self) -> bool:
        return self.host_files().is_local

    def __str__(self) -> str:
        return str(self.address)


def resolve_targets(kind: str, sockets: list[str], domains: list[str], uri: str | None,
                    timeout: float = 10.0) -> list[Target]:
    """Every target the options name; none at all is a usage error that says how to give one.

    ``timeout`` bounds the listing of remote globs (``ssh://HOST/run/*.qmp``), done before any VM is asked.
    """
    targets: list[Target] = [SocketTarget(address, kind) for address in expand_addresses(sockets, timeout)]
    targets += _domain_targets(kind, domains, uri)
    if not targets:
        if kind == AGENT:
            raise UsageError("no target: pass -a PATH (the agent channel socket), -d DOMAIN, or set QMPCTL_AGENT")
        raise UsageError("no target: pass -s PATH (the VM's -qmp socket), -d DOMAIN, or set QMPCTL_QMP")
    return targets



def written_targets(kind: str, sockets: list[str], domains: list[str], uri: str | None) -> list[Target]:
    """The targets as the options write them, globs not expanded and nothing asked: what --dry-run can know.

    An ``ssh://`` glob stays one target, enough to tell where the VM's files are
    (:meth:`Target.host_files`); none at all is an empty list, not an error.
    """
    from qmpctl.wire.address import parse_address

    targets: list[Target] = [SocketTarget(parse_address(value), kind) for value in sockets]
    return targets + _domain_targets(kind, domains, uri)


def _domain_targets(kind: str, domains: list[str], uri: str | None) -> list[Target]:
    if not domains:
        return []
    from qmpctl.wire.libvirt import DomainTarget, split_domain

    targets: list[Target] = []
    for value in domains:  # URI/DOMAIN names a domain on its own URI; a bare name uses -c
        own_uri, name = split_domain(value)
        targets.append(DomainTarget(name, own_uri or uri, kind, value if own_uri else None))
    return targets
