"""Property tests for everything qmpctl parses from untrusted bytes or text.

The peer's bytes (the line reader, QMP and agent message handling) and
the user's text (addresses, raw requests) may be anything: the only
exceptions allowed out are qmpctl's own errors, and memory stays bounded by
the 64 MiB cap.

The normal suite runs a modest number of examples per property. For a long
run (documented in README): ``HYPOTHESIS_PROFILE=long .venv/bin/python -m
pytest -q tests/unit/test_fuzz_readers.py`` (about 100x the examples; a few minutes).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
from typing import Any, Callable
from unittest import mock

import pytest
import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmpctl.wire.address import parse_address
from qmpctl.wire.agent import AgentSession
from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded, ProtocolError, QmpctlError, UsageError, VerificationFailed, VmError
from qmpctl.wire.qmp import QmpSession
from qmpctl.cli.rawcommand import parse_raw_command
from qmpctl.wire.request import Request, parse_json
from qmpctl.wire.schema import load_schema
from qmpctl.timing import SIGNAL_CHECK_SECONDS
from qmpctl.wire.transport import MAX_MESSAGE_BYTES, RECV_CHUNK, Connection
from support.fakes import GREETING, ScriptedSocket

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
FUZZ = settings(max_examples=20_000 if LONG else 200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ADDRESS = parse_address("unix:/fuzz.sock")
NAME_PATTERN = re.compile(r"^(?:[A-Za-z]|__)[A-Za-z0-9_.-]*\Z")  # \Z: Python's $ allows a final newline


def connection(chunks: Any, end: BaseException | None = None) -> Connection:
    return Connection(ScriptedSocket(chunks, end), ADDRESS)  # type: ignore[arg-type]


def deadline() -> Deadline:
    return Deadline(60)


# --- bytes and chunkings -------------------------------------------------------------

interesting_bytes = st.lists(
    st.sampled_from([b"\n", b"\r\n", b"\xff", b"x", b"{", b'{"return": 1}', b'\xff{"return": 7}\n', b"\x00"])
    | st.binary(max_size=20),
    max_size=40,
).map(b"".join)
stream_bytes = st.binary(max_size=400) | interesting_bytes


@st.composite
def chunked(draw: Callable, data: st.SearchStrategy[bytes] = stream_bytes) -> tuple[bytes, list[bytes]]:
    """Some bytes and one way the kernel might hand them over (no empty reads: those mean EOF)."""
    payload = draw(data)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(payload) - 1, 1)), max_size=12))))
    edges = [0] + [cut for cut in cuts if cut < len(payload)] + [len(payload)]
    return payload, [payload[a:b] for a, b in itertools.pairwise(edges) if b > a]


@FUZZ
@given(chunked())
def test_read_line_returns_every_line_whatever_the_chunking(case):
    payload, chunks = case
    conn = connection(chunks)
    lines = []
    with pytest.raises(ProtocolError, match="connection closed"):
        while True:
            lines.append(conn.read_line(deadline(), "fuzz"))
    assert b"".join(lines) == payload[: payload.rfind(b"\n") + 1]
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)


@FUZZ
@given(chunked(), st.sampled_from([socket.timeout("timed out"), ConnectionResetError(104, "reset"),
                                   OSError(5, "Input/output error"), BrokenPipeError(32, "pipe")]))
def test_socket_failures_become_qmpctl_errors(case, failure):
    _, chunks = case
    conn = connection(chunks, end=failure)
    # A socket's timeout is the end of the wait only within the last slice of its deadline (before that it is a
    # slice, and the read waits on): the scripted socket times out at once, so the read gets one slice or less.
    within = (lambda: Deadline(SIGNAL_CHECK_SECONDS / 2)) if isinstance(failure, socket.timeout) else deadline
    with pytest.raises((DeadlineExceeded, ProtocolError)):
        while True:
            conn.read_line(within(), "fuzz")


def test_expired_deadline_never_reaches_the_socket():
    conn = connection([b"never read\n"])
    expired = Deadline(0.001)
    while not expired.expired():
        pass
    with pytest.raises(DeadlineExceeded, match="waiting for fuzz"):
        conn.read_line(expired, "fuzz")


# --- memory stays bounded ---------------------------------------------------------------

def endless(chunk: bytes):
    while True:
        yield chunk


def test_line_over_the_cap_is_a_protocol_error_with_bounded_memory():
    conn = connection(endless(b"x" * RECV_CHUNK))
    with pytest.raises(ProtocolError, match="64 MiB"):
        conn.read_line(deadline(), "fuzz")
    assert len(conn._buffer) <= MAX_MESSAGE_BYTES + RECV_CHUNK


# --- QMP message handling -------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def qmp_messages(our_ids: list[str]) -> st.SearchStrategy[bytes]:
    """Lines a QMP peer might send: sane, stale, broken or hostile."""
    some_id = st.sampled_from(our_ids + ["libvirt-1", 7, None]) | json_values
    error = st.fixed_dictionaries({"class": st.text(max_size=10) | json_values, "desc": st.text(max_size=20)})
    message = st.one_of(
        st.just(GREETING),
        st.fixed_dictionaries({"event": st.text(max_size=10), "data": json_values,
                               "timestamp": st.just({"seconds": 1, "microseconds": 2})}),
        st.fixed_dictionaries({"return": json_values, "id": some_id}),
        st.fixed_dictionaries({"return": json_values}),
        st.fixed_dictionaries({"error": error | json_values, "id": some_id}),
        st.fixed_dictionaries({"error": error | json_values}),
        st.fixed_dictionaries({"id": some_id}),
        st.fixed_dictionaries({"QMP": json_values}),
        json_values,
    ).map(lambda value: json.dumps(value).encode() + b"\r\n")
    hostile = st.sampled_from([
        b"[" * 50_000 + b"\r\n", b'{"return": NaN, "id": "%s"}\r\n' % our_ids[-1].encode(),
        b'{"return": ' + b"9" * 5000 + b"}\r\n", b"\xff\xfe\r\n", b"\r\n", b"not json\r\n",
    ])
    return message | hostile | st.binary(max_size=30).map(lambda raw: raw + b"\r\n")


@FUZZ
@given(st.data())
def test_qmp_session_survives_any_sequence_of_lines(data):
    prefix = f"qmpctl-{os.getpid()}-"
    lines = data.draw(st.lists(qmp_messages([prefix + "1", prefix + "2"]), max_size=12))
    if data.draw(st.booleans()):  # often let it get past the handshake to the command
        lines = [json.dumps(GREETING).encode() + b"\r\n",
                 json.dumps({"return": {}, "id": prefix + "1"}).encode() + b"\r\n"] + lines
    payload = b"".join(lines)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(len(payload), 1)), max_size=8))))
    chunks = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)], strict=True) if b > a]
    session = QmpSession(connection(chunks))
    try:
        session._read_greeting(deadline())
        session._negotiate(deadline())
        reply = session.execute(Request("query-status"), deadline())
    except QmpctlError as error:
        assert isinstance(error, (ProtocolError, VmError, DeadlineExceeded)), error
        assert error.message
        return
    assert "id" not in reply and "return" in reply
    assert json.dumps(reply)  # whatever was accepted can be printed as JSON


@FUZZ
@given(st.lists(qmp_messages(["x"]), max_size=10))
def test_waiting_for_an_event_survives_any_lines(lines):
    session = QmpSession(connection([b"".join(lines)]))
    try:
        event = session.wait_event(lambda e: e.get("event") == "", deadline(), "an event")
    except QmpctlError:
        return
    assert event["event"] == ""


# --- the agent's 0xFF-delimited reader ----------------------------------------------------------

SYNC_ID = 1234567
SYNC_REPLY = b'\xff{"return": 1234567}\n'


@FUZZ
@given(chunked(stream_bytes.filter(lambda junk: b"1234567" not in junk)), st.data())
def test_agent_resync_finds_its_reply_behind_any_junk(case, data):
    """Whatever earlier clients left on the channel, the sync reply that follows it is found."""
    junk, _ = case
    payload = junk + SYNC_REPLY + b'{"return": {"pong": true}, "id": 1234567}\n'
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(payload) - 1), max_size=10))))
    chunks = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)], strict=True) if b > a]
    with mock.patch("qmpctl.wire.agent._random_id", return_value=SYNC_ID):
        session = AgentSession(connection(chunks))
        session.resync(deadline())
        reply = session.execute(Request("guest-ping", protocol="qga"), deadline())
    assert reply == {"return": {"pong": True}}
    assert session.connection.sock.sent.startswith(b"\xff")  # type: ignore[attr-defined]


@FUZZ
@given(st.lists(qmp_messages(["x"]) | st.binary(max_size=30), max_size=10))
def test_agent_reply_reader_survives_any_lines(lines):
    payload = SYNC_REPLY + b"".join(lines)
    with mock.patch("qmpctl.wire.agent._random_id", return_value=SYNC_ID):
        session = AgentSession(connection([payload]))
        session.resync(deadline())
        try:
            reply = session.execute(Request("guest-ping", protocol="qga"), deadline())
        except QmpctlError as error:
            assert isinstance(error, (ProtocolError, VmError)), error
            return
    assert "return" in reply and "id" not in reply


# --- what the user types -------------------------------------------------------------------------

digit_like = "0123456789" + "²³¹①٣६𝟘" + "½Ⅻ"
"""ASCII digits, and characters for which str.isdigit() or int() is true but that are no port number."""
address_texts = st.one_of(
    st.text(max_size=60),
    st.tuples(
        st.sampled_from(["", "unix:", "tcp:", "[", "tcp:["]),
        st.sampled_from(["localhost", "127.0.0.1", "::1", "/run/vm", "a,,b", ""])
        | st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(list(":,[]/.")), max_size=20),
        st.sampled_from(["", ":", "]:", ",", ",,"]),
        st.text(alphabet=st.sampled_from(digit_like), max_size=6) | st.text(max_size=6),
        st.sampled_from(["", ",server=on,wait=off", ",server,nowait", ",,x"]),
    ).map("".join),
)


@FUZZ
@given(address_texts)
def test_address_parses_to_something_connectable_or_fails_cleanly(text):
    try:
        address = parse_address(text)
    except UsageError as error:
        assert error.message
        return
    if address.path is not None:
        assert address.host is None and address.port is None
        assert address.path and "\0" not in address.path
    else:
        assert address.host and isinstance(address.port, int) and 0 < address.port < 65536


special_values = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", '"\\ud800"', '"\\udcff"', '"\\u0000"',
                                  "[" * 3000 + "]" * 3000, "{}", "[]", "null", "tru", "'x'"])
member = st.tuples(st.text(max_size=6).map(json.dumps), special_values | json_values.map(json.dumps)).map(
    lambda pair: f"{pair[0]}: {pair[1]}")
names = st.sampled_from(["query-status", "__x", "x.y-z", "1abc", "", "a b", "qom-get"]) | st.text(max_size=10)
raw_words = st.one_of(
    st.tuples(names, st.lists(member, max_size=3)).map(lambda t: [t[0], ", ".join(t[1])]),
    st.tuples(names.map(json.dumps), st.lists(member, max_size=3)).map(
        lambda t: [f'{{"execute": {t[0]}, "arguments": {{{", ".join(t[1])}}}}}']),
    st.lists(st.text(max_size=20) | special_values | st.sampled_from(["{", "}", '"execute":', ","]), max_size=8),
)


@FUZZ
@given(raw_words, st.sampled_from(["qmp", "qga"]))
def test_raw_command_is_a_valid_request_or_a_usage_error(words, protocol):
    try:
        request = parse_raw_command(words, protocol=protocol)
    except UsageError as error:
        assert error.message
        return
    wire = request.wire("id-1")
    assert wire.endswith(b"\n") and wire.count(b"\n") == 1
    sent = parse_json(wire.decode("utf-8", "strict"))  # strict UTF-8, strict JSON: what QEMU reads
    assert sent == request.as_dict("id-1")
    assert NAME_PATTERN.match(sent["execute"])
    assert isinstance(sent.get("arguments", {}), dict)


# --- chain manifests (chain.json: data from a folder the QEMU user may write) ----------

GOOD_MANIFEST = load_schema("chain")["examples"][0]


def _mutated_manifest(data) -> Any:
    """A manifest near a valid one: a member replaced, removed or added, at the top or in an image."""
    manifest = json.loads(json.dumps(GOOD_MANIFEST))
    for _ in range(data.draw(st.integers(0, 3))):
        target = manifest
        if data.draw(st.booleans()) and isinstance(manifest.get("images"), list) and manifest["images"]:
            index = data.draw(st.integers(0, len(manifest["images"]) - 1))
            if not isinstance(manifest["images"][index], dict):
                manifest["images"][index] = {}
            target = manifest["images"][index]
        action = data.draw(st.sampled_from(["replace", "remove", "add"]))
        keys = sorted(target)
        if action == "add" or not keys:
            target[data.draw(st.text(max_size=8))] = data.draw(json_values)
        elif action == "remove":
            target.pop(data.draw(st.sampled_from(keys)))
        else:
            target[data.draw(st.sampled_from(keys))] = data.draw(json_values | special_values.map(parse_special))
    return manifest


def parse_special(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


@FUZZ
@given(st.data())
def test_a_manifest_is_checked_whole_or_refused_naming_its_file(data):
    """Only exit 6 naming the file comes out; what passes matches the schema (by the reference jsonschema)
    and the chain's naming, so every later ``entry["size"]`` or ``entry["file"]`` is what it claims."""
    from qmpctl.backup.manifest import parse_manifest

    if data.draw(st.booleans()):
        raw = data.draw(stream_bytes | special_values.map(str.encode))
    else:
        raw = json.dumps(_mutated_manifest(data)).encode()
    try:
        manifest = parse_manifest(raw, "/b/c/chain.json")
    except VerificationFailed as error:
        assert error.message.startswith("/b/c/chain.json is not a valid qmpctl chain manifest")
        return
    assert jsonschema.Draft202012Validator(load_schema("chain")).is_valid(manifest)
    for number, entry in enumerate(manifest["images"], 1):
        assert entry["file"] == f"{number:04d}-{'full' if number == 1 else 'inc'}.qcow2"
        assert "/" not in entry["file"] and isinstance(entry["size"], int) and not isinstance(entry["size"], bool)
