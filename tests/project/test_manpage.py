"""The man page is generated, current, clean for both man formatters, complete, and installed with the package."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from qmpctl.cli.spec import all_options
from qmpctl.errors import ExitCode
from support.docs import man_module
from support.runner import REPO

PAGE = REPO / "man" / "qmpctl.1"
generate = man_module("generate")
readme = man_module("readme")


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (run tests/setup-host)")


def rendered() -> str:
    """The page as a reader sees it (mandoc's plain-text output, without overstrike)."""
    _need("mandoc")
    text = subprocess.run(["mandoc", "-T", "ascii", "-O", "width=100", str(PAGE)], capture_output=True, text=True,
                          check=True).stdout
    return re.sub(r".\x08", "", text)


def section(text: str, title: str) -> str:
    found = re.search(rf"^{title}\n(.*?)(?=^[A-Z][A-Z ]+\n|\Z)", text, re.MULTILINE | re.DOTALL)
    assert found, f"the page has no {title} section"
    return found.group(1)


def commands() -> list:
    from qmpctl.cli.spec import COMMANDS

    return [(" ".join(command.words), command) for command in COMMANDS]


def test_committed_page_is_what_the_generator_makes():
    assert PAGE.read_text(encoding="utf-8") == generate.generate(), (
        "man/qmpctl.1 is out of date with qmpctl/cli/spec.py or README.md: run .venv/bin/python man/generate.py")


def test_mandoc_lint_is_clean():
    _need("mandoc")
    proc = subprocess.run(["mandoc", "-T", "lint", "-W", "style", str(PAGE)], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_groff_has_no_warnings():
    _need("groff")
    proc = subprocess.run(["groff", "-ww", "-man", "-z", str(PAGE)], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_man_renders_it():
    _need("man")
    proc = subprocess.run(["man", "-l", str(PAGE)], capture_output=True, text=True, env={"MANWIDTH": "100",
                          "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    for title in ("NAME", "SYNOPSIS", "ADDRESSES", "COMMANDS", "ENVIRONMENT", "EXIT STATUS", "GUARANTEES",
                  "EXAMPLES"):
        assert re.search(rf"^{title}$", proc.stdout, re.MULTILINE), title


def test_every_command_argument_and_option_is_described():
    text = rendered()
    described = section(text, "COMMANDS") + section(text, "COMMON OPTIONS")
    for name, command in commands():
        assert f"qmpctl {name} [OPTIONS]" in described, name
        for option in all_options(command):
            for word in option.flags + option.off_flags:
                if word.startswith("-"):
                    assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", described), f"{name}: {word}"


def test_every_exit_code_and_environment_variable_is_described():
    text = rendered()
    exit_status = section(text, "EXIT STATUS")
    for code in ExitCode:
        assert re.search(rf"^\s+{code.value}\s", exit_status, re.MULTILINE), f"exit code {code.value}"
    environment = section(text, "ENVIRONMENT")
    variables = {o.envvar for _, command in commands() for o in all_options(command) if o.envvar}
    assert variables >= {"QMPCTL_QMP", "QMPCTL_AGENT", "QMPCTL_TIMEOUT", "LIBVIRT_DEFAULT_URI"}
    for variable in variables | {"QMPCTL_TRACEBACK"}:
        assert re.search(rf"^\s+{variable}$", environment, re.MULTILINE), variable


def test_guarantees_and_examples_come_from_the_readme():
    """The page shows only examples test_docs.py runs, and every guarantee the README backs with a test."""
    text = rendered()
    tested = {line.strip() for block in readme.Readme.load().blocks if block.info in (readme.RUNNABLE, readme.CRONTAB)
              for line in block.text.splitlines()}
    example_lines = [line.strip() for line in section(text, "EXAMPLES").splitlines() if line.startswith(" " * 11)]
    assert len(example_lines) > 40
    assert set(example_lines) <= tested
    guarantees = " ".join(section(text, "GUARANTEES").split())
    for promise in ("Bounded time.", "No half-attached disks.", "No overwritten backups.", "No stray jobs"):
        assert promise in guarantees


def test_the_wheel_installs_the_page_under_share_man_man1():
    """setup-host installs qmpctl non-editable, as users do: its RECORD must list the page where man finds it."""
    site_packages = sysconfig.get_paths()["purelib"]  # not the source tree's own egg-info, which is on sys.path too
    installed_copies = list(importlib.metadata.distributions(name="qmpctl", path=[site_packages]))
    if not installed_copies:
        pytest.skip("qmpctl is not installed in this environment (run tests/setup-host)")
    distribution = installed_copies[0]
    pages = [file for file in distribution.files or [] if str(file).endswith("share/man/man1/qmpctl.1")]
    assert pages, "the installed qmpctl carries no man page"
    installed = Path(distribution.locate_file(pages[0]))
    assert installed.is_file()
