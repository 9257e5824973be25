#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris/libFuzzer) of what qmpctl parses from untrusted input.

Not part of the test suite (atheris is not a test dependency). Run:

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/fuzz_readers.py -dict=tests/fuzz/qmpctl.dict -max_total_time=60

The first input byte picks a target: the transport readers over a chunked
stream, a QMP session, an agent session, address parsing, raw requests, a chain's manifest.
Anything but a QmpctlError escaping is a finding (libFuzzer saves the input
as crash-*; replay it by passing that file as the only argument).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

import atheris  # noqa: E402

with atheris.instrument_imports():
    from qmpctl.backup.manifest import parse_manifest
    from qmpctl.wire.address import parse_address
    from qmpctl.wire.agent import AgentSession
    from qmpctl.deadline import Deadline
    from qmpctl.errors import QmpctlError
    from qmpctl.wire.qmp import QmpSession
    from qmpctl.cli.rawcommand import parse_raw_command
    from qmpctl.wire.request import Request, parse_json
    from qmpctl.wire.transport import Connection

from qmpctl.wire.address import Address  # noqa: E402
from support.fakes import ScriptedSocket  # noqa: E402

ADDRESS = Address(path="/fuzz.sock")
QMP_PREFIX = f"qmpctl-{os.getpid()}-".encode()


def chunks_of(provider: atheris.FuzzedDataProvider) -> list[bytes]:
    """The rest of the input, cut where the fuzzer says, as successive recv() results."""
    sizes = [provider.ConsumeIntInRange(1, 64) for _ in range(provider.ConsumeIntInRange(0, 16))]
    data = provider.ConsumeBytes(provider.remaining_bytes())
    # Let the fuzzer write our ids without guessing the pid.
    data = data.replace(b"@1", b'"' + QMP_PREFIX + b'1"').replace(b"@2", b'"' + QMP_PREFIX + b'2"')
    chunks, start = [], 0
    for size in sizes:
        if start < len(data):
            chunks.append(data[start:start + size])
            start += size
    if start < len(data):
        chunks.append(data[start:])
    return chunks


def connection(provider: atheris.FuzzedDataProvider) -> Connection:
    return Connection(ScriptedSocket(chunks_of(provider)), ADDRESS)  # type: ignore[arg-type]


def readers(provider: atheris.FuzzedDataProvider) -> None:
    conn = connection(provider)
    for _ in range(8):
        conn.read_line(Deadline(60), "fuzz")


def qmp_session(provider: atheris.FuzzedDataProvider) -> None:
    session = QmpSession(connection(provider))
    session._read_greeting(Deadline(60))
    session._negotiate(Deadline(60))
    session.execute(Request("query-status"), Deadline(60))
    session.wait_event(lambda event: event.get("event") == "STOP", Deadline(60), "an event")


def agent_session(provider: atheris.FuzzedDataProvider) -> None:
    with mock.patch("qmpctl.wire.agent._random_id", return_value=7):
        session = AgentSession(connection(provider))
        session.resync(Deadline(60))
        session.execute(Request("guest-ping", protocol="qga"), Deadline(60))


def argv_text(provider: atheris.FuzzedDataProvider, size: int) -> str:
    """Text as Python hands argv over: UTF-8, with undecodable bytes as lone surrogates."""
    return provider.ConsumeBytes(size).decode("utf-8", "surrogateescape")


def address(provider: atheris.FuzzedDataProvider) -> None:
    parse_address(argv_text(provider, provider.remaining_bytes()))


def raw_command(provider: atheris.FuzzedDataProvider) -> None:
    words = [argv_text(provider, provider.ConsumeIntInRange(0, 200)) for _ in range(provider.ConsumeIntInRange(1, 4))]
    request = parse_raw_command(words, protocol="qga" if provider.ConsumeBool() else "qmp")
    parse_json(request.wire(1).decode("utf-8"))  # what goes on the wire is strict UTF-8 JSON


def manifest(provider: atheris.FuzzedDataProvider) -> None:
    parse_manifest(provider.ConsumeBytes(provider.remaining_bytes()), "/fuzz/chain.json")


TARGETS = [readers, qmp_session, agent_session, address, raw_command, manifest]


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    target = TARGETS[provider.ConsumeIntInRange(0, len(TARGETS) - 1)]
    try:
        target(provider)
    except QmpctlError:
        pass


def main() -> None:
    sys.setrecursionlimit(1000)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
