"""QEMU jobs (backup, blockdev-create): wait for the end, read the outcome, cancel, dismiss.

qmpctl starts its jobs with auto-dismiss off. A job that dismissed itself is
gone from query-jobs, and a client that polls (a libvirt session has no
events) could no longer tell success from failure. So the final status and
error are read from query-jobs first, and only then is the job dismissed: no
job of qmpctl's is left behind, and no outcome is lost.
"""

from __future__ import annotations

from qmpctl.deadline import Deadline
from qmpctl.errors import JobFailed, ProtocolError, VmError
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session
from qmpctl.timing import CHECK_EVERY, POLL_MAX
from qmpctl.wire.waiting import event_named, wait_until

if TYPE_CHECKING:
    from typing import Any, Callable, Optional


class JobState(NamedTuple):
    """One entry of query-jobs."""

    id: str
    type: str
    status: str
    done: int
    total: int
    error: Optional[str] = None

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "JobState":
        error = info.get("error")
        return cls(str(info.get("id", "")), str(info.get("type", "")), str(info.get("status", "")),
                   int(info.get("current-progress") or 0), int(info.get("total-progress") or 0),
                   str(error) if error is not None else None)

    @property
    def concluded(self) -> bool:
        return self.status == "concluded"

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0


if TYPE_CHECKING:
    Progress = Callable[[JobState], None]


def list_jobs(session: Session, deadline: Deadline) -> dict[str, JobState]:
    request = Request("query-jobs")
    reply = session.execute(request, deadline).get("return")
    if not isinstance(reply, list):
        raise ProtocolError(f"{session.target} answered query-jobs with something that is not a list",
                            sent=request.as_dict(), received=reply)
    states = (JobState.from_info(info) for info in reply if isinstance(info, dict))
    return {state.id: state for state in states}


def find_job(session: Session, job_id: str, deadline: Deadline) -> Optional[JobState]:
    return list_jobs(session, deadline).get(job_id)


def wait_for_end(session: Session, job_id: str, wait: Deadline, deadline: Deadline,
                 progress: Optional[Progress] = None, every: float = CHECK_EVERY) -> JobState:
    """Block until ``job_id`` has concluded and return its final state (``error`` set when it failed).

    ``progress`` sees every state read while waiting. The wait as a whole is
    bounded by ``wait``; each request in it by the call's ``deadline`` length
    as well (see :meth:`Deadline.within`), so a VM that stops answering is noticed.
    """
    def check() -> Optional[JobState]:
        state = find_job(session, job_id, wait.within(deadline))
        if state is None:
            raise JobFailed(f"job {job_id} disappeared before qmpctl saw it end (did another client dismiss it?)",
                            sent=Request("query-jobs").as_dict())
        if state.concluded:
            return state
        if progress is not None:
            progress(state)
        return None

    concluded = event_named("JOB_STATUS_CHANGE", id=job_id, status="concluded")
    return wait_until(session, check, wait, f"job {job_id} to finish", event=concluded, every=every)


def dismiss(session: Session, job_id: str, deadline: Deadline) -> None:
    session.execute(Request("job-dismiss", {"id": job_id}), deadline)


def cancel_job(session: Session, job_id: str, deadline: Deadline) -> Optional[JobState]:
    """Cancel ``job_id`` if it still runs, wait until it has concluded or is gone, dismiss it.

    Returns its last state (None: there was no such job). A job started with
    auto-dismiss on (not by qmpctl) goes away by itself once cancelled; that
    counts as done. Bounded by ``deadline`` as a whole: a cancellation takes
    milliseconds, and a cleanup must not hang.
    """
    state = find_job(session, job_id, deadline)
    if state is None:
        return None
    if not state.concluded:
        try:
            session.execute(Request("job-cancel", {"id": job_id}), deadline)
        except VmError:
            pass  # it concluded meanwhile; the wait below sees that
        last = state

        def check() -> Optional[JobState]:
            nonlocal last
            now = find_job(session, job_id, deadline)
            if now is None or now.concluded:
                return now or last
            last = now
            return None

        state = wait_until(session, check, deadline, f"job {job_id} to end after job-cancel",
                           event=event_named("JOB_STATUS_CHANGE", id=job_id), every=POLL_MAX)
        if not state.concluded:
            return state  # auto-dismissed: already gone
    dismiss(session, job_id, deadline)
    return state


finish = cancel_job
"""The cleanup step of a job qmpctl started: the same as cancelling it on request."""


def failure_detail(session: Session, job_id: str) -> str:
    """What BLOCK_JOB_ERROR said about ``job_id`` (which side failed), where events were seen."""
    for event in session.events:
        if event_named("BLOCK_JOB_ERROR", device=job_id)(event):
            operation = event["data"].get("operation")
            if operation == "read":
                return " (reading the source failed)"
            if operation == "write":
                return " (writing the target failed)"
    return ""
