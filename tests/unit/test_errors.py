"""The error root's add_note: a cleanup's word joins the message, and the error stays what it was."""

from __future__ import annotations

from qmpctl.errors import DeadlineExceeded, ExitCode, VmError


def test_a_note_joins_the_message_and_the_class_exit_code_and_context_stay():
    error = DeadlineExceeded("timed out", sent={"execute": "x"}, received=None)
    error.add_note("the source is running")
    error.add_note("told the destination to quit")
    assert error.message == str(error) == "timed out; the source is running; told the destination to quit"
    assert error.exit_code == ExitCode.TIMEOUT and error.sent == {"execute": "x"}
    assert not getattr(error, "__notes__", None)  # in the message, not printed a second time by a traceback


def test_an_empty_note_adds_nothing_and_joined_says_how_a_note_is_attached():
    error = VmError("GenericError", "no")
    error.add_note("")
    assert error.message == "GenericError: no"
    error.add_note("(a hint)", joined=" ")
    assert error.message == "GenericError: no (a hint)" and error.to_json() == {"class": "GenericError",
                                                                                 "desc": "no"}
