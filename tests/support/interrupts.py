"""A session wrapper that raises KeyboardInterrupt right after one command: a Ctrl-C at an exact point."""

from __future__ import annotations


class InterruptAfter:
    """A session that raises KeyboardInterrupt once ``execute`` has sent one command and had its answer."""

    def __init__(self, session, command: str) -> None:
        self.session = session
        self.command = command

    def __getattr__(self, name: str):
        return getattr(self.session, name)

    def execute(self, request, deadline, *args):
        reply = self.session.execute(request, deadline, *args)
        if request.execute == self.command:
            raise KeyboardInterrupt
        return reply
