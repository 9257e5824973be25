"""A session wrapper that raises KeyboardInterrupt right after one command: a Ctrl-C at an exact point."""

from __future__ import annotations


class InterruptAfter:
    """A session that raises KeyboardInterrupt once ``execute`` has sent one command and had its answer.

    Only the first time: qmpctl's handler blocks later signals while the cleanup runs, so a cleanup that sends
    the same command again (a drive put back with qom-set) is not interrupted.
    """

    def __init__(self, session, command: str) -> None:
        self.session = session
        self.command = command
        self.fired = False

    def __getattr__(self, name: str):
        return getattr(self.session, name)

    def execute(self, request, deadline, *args):
        reply = self.session.execute(request, deadline, *args)
        if request.execute == self.command and not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return reply
