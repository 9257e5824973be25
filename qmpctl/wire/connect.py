"""Reaching an address: its glob expanded and its byte stream opened, on this machine or through ssh.

This module sits above address.py, transport.py and ssh.py: ssh builds on
addresses and on the transport, so the ``ssh://`` cases are decided here
(importing :mod:`qmpctl.wire.ssh` only when such an address is used, for its
import cost) rather than inside the modules ssh itself imports, and no
module imports one that imports it back.
"""

from __future__ import annotations

from qmpctl.wire.address import Address, has_glob, parse_address
from qmpctl.deadline import Deadline
from qmpctl.errors import ConnectError
from qmpctl.wire.transport import Connection


def open_connection(address: Address, deadline: Deadline) -> Connection:
    """The byte stream to ``address``: a socket of qmpctl's own, or a channel through ssh.

    :raise ConnectError: the socket (or the ssh host) cannot be reached.
    :raise DeadlineExceeded: not within ``deadline``.
    """
    if address.via is not None:
        from qmpctl.wire.ssh import open_channel

        return open_channel(address, deadline)
    return Connection.open(address, deadline)


def expand_addresses(values: list[str], timeout: float = 10.0) -> list[Address]:
    """Parse every value, expanding unix paths with glob characters to their matches.

    A pattern that matches nothing is an error: a cron job asking "all my VMs"
    must not silently succeed on none. A pattern in an ``ssh://`` address is
    expanded on that host, within ``timeout`` for all such listings together.
    """
    addresses: list[Address] = []
    listing: Deadline | None = None
    for value in values:
        address = parse_address(value)
        if address.via is not None and address.path is not None and has_glob(address.path):
            from qmpctl.wire.ssh import expand_remote

            listing = listing or Deadline(timeout)
            addresses.extend(expand_remote(address, listing))
        elif address.path is not None and has_glob(address.path):
            import glob

            matches = sorted(glob.glob(address.path))
            if not matches:
                raise ConnectError(f"no socket matches {address.path!r}")
            addresses.extend(Address(path=match) for match in matches)
        else:
            addresses.append(address)
    return list(dict.fromkeys(addresses))
