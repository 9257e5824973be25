"""``qmpctl help [TOPIC]`` shows the manual page of a command, with the real man, mandoc and groff.

On a terminal, ``man -l PAGE`` shows it; through a pipe the page comes out as
plain text, rendered by mandoc, else groff, else roughly from the roff source.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qmpctl.cli import manual
from qmpctl.cli.spec import MANUALS
from support.runner import REPO

pytestmark = pytest.mark.one_qemu

MAN = REPO / "man"


def _need(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        pytest.skip(f"{binary} is not installed (run tests/setup-host)")
    return found


def mandoc_text(page: Path, width: int = 80) -> str:
    proc = subprocess.run([_need("mandoc"), "-T", "utf8", "-O", f"width={width}", str(page)], capture_output=True,
                          check=True)
    return re.sub(r".\x08", "", proc.stdout.decode())


@pytest.mark.parametrize("topic, page", [
    ((), "qmpctl.1"),
    (("help",), "qmpctl.1"),
    (("backup",), "qmpctl-backup.1"),
    (("restore",), "qmpctl-backup.1"),
    (("agent", "exec"), "qmpctl-agent.1"),
    (("agent",), "qmpctl-agent.1"),
    (("jobs",), "qmpctl-block.1"),
    (("remote",), "qmpctl-remote.7"),
    (("qmpctl-migrate",), "qmpctl-migrate.1"),
], ids=lambda value: " ".join(value) if isinstance(value, tuple) else value)
def test_through_a_pipe_the_page_is_mandocs_plain_text(cli, topic, page):
    result = cli("help", *topic)
    assert (result.code, result.err) == (0, ""), result
    assert result.out == mandoc_text(MAN / page)
    assert "\x08" not in result.out and "\x1b" not in result.out
    name, _, number = page.rpartition(".")
    assert result.out.startswith(f"{name.upper()}({number})")


def test_every_command_has_a_page_help_finds():
    for listed in MANUALS:
        for command in listed.commands:
            assert manual.find_manual(command.split()) is listed


def test_an_unknown_topic_is_exit_2_naming_the_topics(cli):
    result = cli("help", "bakup")
    assert result.code == 2 and result.out == ""
    assert "no manual page for 'bakup'" in result.err and "backup-verify" in result.err and "remote" in result.err


def test_on_a_terminal_man_shows_the_page(tmp_path):
    """A pty for stdout: qmpctl runs the real man on the source tree's page (here with cat as its pager)."""
    real_man = _need("man")
    log = tmp_path / "man.args"
    wrapper = tmp_path / "bin" / "man"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\nexec {real_man} "$@"\n')
    wrapper.chmod(0o755)
    env = {"PATH": f"{wrapper.parent}{os.pathsep}/usr/bin:/bin", "PYTHONPATH": str(REPO), "MANPAGER": "cat",
           "PAGER": "cat", "MANWIDTH": "100", "LANG": "C.UTF-8", "HOME": str(tmp_path), "TERM": "dumb"}
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "qmpctl", "help", "migrate"], stdin=subprocess.DEVNULL,
                                stdout=terminal, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
        os.close(terminal)
        chunks = []
        while True:
            ready, _, _ = select.select([controller], [], [], 30)
            assert ready, "man did not finish within 30 s"
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the pty's other side closed: Linux says EIO
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        os.close(controller)
    shown = re.sub(r".\x08|\x1b\[[0-9;]*m|\r", "", b"".join(chunks).decode("utf-8", "replace"))
    assert log.read_text().split("\n")[:2] == ["-l", str(MAN / "qmpctl-migrate.1")]
    assert "QMPCTL-MIGRATE(1)" in shown and "--to-file" in shown


def test_without_mandoc_groff_renders_it(tmp_path):
    """groff alone (as on a machine with groff-base but no mandoc): the same page, as plain text."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for binary in ("groff", "troff", "grotty", "preconv"):
        os.symlink(_need(binary), tools / binary)
    proc = subprocess.run([sys.executable, "-m", "qmpctl", "help", "block"], capture_output=True, text=True,
                          env={"PATH": str(tools), "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert "\x08" not in proc.stdout and "\x1b" not in proc.stdout
    assert proc.stdout.startswith("QMPCTL-BLOCK(1)")
    assert "hotplug-disk" in proc.stdout and "--wait-timeout" in proc.stdout


def test_without_any_formatter_the_page_is_still_readable(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "qmpctl", "help", "performance"], capture_output=True, text=True,
                          env={"PATH": str(tmp_path), "PYTHONPATH": str(REPO)}, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert "\\f" not in proc.stdout and not re.search(r"^\.", proc.stdout, re.MULTILINE)
    for words in ("NAME", "qmpctl-performance - ", "COMMANDS", "--bps-rd BYTES_PER_SEC", "SEE ALSO"):
        assert words in proc.stdout, words


def test_an_installed_copy_reads_the_page_under_its_prefix(tmp_path, monkeypatch):
    """Outside a checkout (no man/ beside the package) the page is PREFIX/share/man/manN/NAME.N."""
    package = tmp_path / "site-packages" / "qmpctl"
    package.mkdir(parents=True)
    prefix = tmp_path / "prefix"
    (prefix / "share/man/man7").mkdir(parents=True)
    shutil.copy(MAN / "qmpctl-remote.7", prefix / "share/man/man7")
    monkeypatch.setattr(sys, "prefix", str(prefix))
    remote = manual.find_manual(["remote"])
    assert manual.locate(remote, str(package)) == str(prefix / "share/man/man7/qmpctl-remote.7")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "elsewhere"))
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HOME", str(tmp_path))
    if any(Path(path).is_file() for path in manual.candidates(remote, str(package))):
        pytest.skip("qmpctl's pages are installed system-wide here")
    from qmpctl.errors import UsageError

    with pytest.raises(UsageError, match="not installed"):
        manual.locate(remote, str(package))


def test_the_source_trees_page_comes_first():
    assert manual.locate(manual.find_manual(["backup"])) == str(MAN / "qmpctl-backup.1")


def test_the_short_help_points_to_the_manual(cli):
    result = cli("--help")
    assert result.code == 0 and "qmpctl help COMMAND shows a command's manual page" in result.out
    assert re.search(r"^\s+help\s+Show the manual page", result.out, re.MULTILINE), result.out
