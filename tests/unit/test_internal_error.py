"""A bug in qmpctl must never look like "the VM answered with an error" (exit 1)."""

from __future__ import annotations


from qmpctl.cli import parse, run_cli
from qmpctl.errors import ExitCode


def test_unexpected_exception_is_exit_70_with_one_line(monkeypatch, capsys, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(parse, "parse", broken)
    monkeypatch.delenv("QMPCTL_TRACEBACK", raising=False)
    code = run_cli(["status", "-s", str(tmp_path / "vm.sock")])
    err = capsys.readouterr().err
    assert code == ExitCode.INTERNAL == 70
    assert err.count("\n") == 1 and "internal error: RuntimeError: simulated bug" in err


def test_traceback_on_request(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(parse, "parse", lambda *a, **k: 1 / 0)
    monkeypatch.setenv("QMPCTL_TRACEBACK", "1")
    assert run_cli(["status", "-s", str(tmp_path / "vm.sock")]) == 70
    assert "Traceback" in capsys.readouterr().err
