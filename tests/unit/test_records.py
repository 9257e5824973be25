"""qmpctl.records.NamedTuple behaves like typing.NamedTuple for what qmpctl declares with it."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest

from qmpctl import records


def _declare(base: type) -> type:
    class Reading(base):  # type: ignore[misc,valid-type]
        """One reading."""

        status: str
        done: int = 0
        total: int = 0

        @property
        def percent(self) -> float:
            return 100.0 * self.done / self.total if self.total else 0.0

        @classmethod
        def idle(cls) -> "Reading":
            return cls("idle")

        def __str__(self) -> str:
            return f"{self.status} {self.done}/{self.total}"

    return Reading


@pytest.mark.parametrize("base", [records.NamedTuple, typing.NamedTuple], ids=["records", "typing"])
def test_a_declared_record_has_the_fields_defaults_and_methods_of_its_body(base):
    Reading = _declare(base)
    reading = Reading("active", 5, total=10)
    assert Reading._fields == ("status", "done", "total")
    assert Reading._field_defaults == {"done": 0, "total": 0}
    assert tuple(reading) == ("active", 5, 10) and reading == ("active", 5, 10)
    assert reading.percent == 50.0 and str(reading) == "active 5/10"
    assert Reading.idle() == Reading("idle", 0, 0)
    assert reading._replace(done=10).percent == 100.0
    assert reading._asdict() == {"status": "active", "done": 5, "total": 10}
    assert Reading.__doc__ == "One reading." and Reading.__name__ == "Reading"
    assert Reading.__qualname__.endswith("_declare.<locals>.Reading")
    with pytest.raises(AttributeError):
        reading.status = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Reading()  # status has no default


def test_a_default_before_a_field_without_one_is_refused_like_typing():
    with pytest.raises(TypeError):
        class Wrong(records.NamedTuple):  # noqa: F841
            first: int = 0
            second: int


def test_typing_is_not_imported_by_the_records_module_nor_the_cli_entry():
    probe = "import sys, qmpctl.records, qmpctl.cli, qmpctl.cli.parse; print('typing' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_chain_job_ids_of_two_long_disk_names_differ_and_stay_the_same():
    """Two disks without an id are named by QOM paths that share their first 19 characters."""
    from qmpctl.backup.chain import job_id_for
    from qmpctl.backup.full import MAX_JOB_ID

    first, second = (job_id_for(f"/machine/peripheral-anon/device[{n}]") for n in (0, 1))
    assert first != second and len(first) <= MAX_JOB_ID and len(second) <= MAX_JOB_ID
    assert first == job_id_for("/machine/peripheral-anon/device[0]")
    assert job_id_for("vd0") == "chain-vd0"
