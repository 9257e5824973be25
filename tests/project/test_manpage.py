"""The manual pages are generated, current, clean for both man formatters, complete, and installed with the package.

qmpctl(1) is the index; each group of commands has its own page (``MANUALS`` in qmpctl/cli/spec.py), generated
from the declaration and the page's hand-written text in man/pages/. ``qmpctl help`` shows them.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from qmpctl.cli.spec import MANUALS, all_options
from qmpctl.errors import ExitCode
from support.docs import man_module
from support.runner import REPO

PAGE = REPO / "man" / "qmpctl.1"
generate = man_module("generate")
readme = man_module("readme")
PAGES = [REPO / "man" / f"{manual.name}.{manual.section}" for manual in MANUALS]
PAGE_IDS = [path.name for path in PAGES]


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (run tests/setup-host)")


def rendered(page: Path = PAGE) -> str:
    """The page as a reader sees it (mandoc's plain-text output, without overstrike)."""
    _need("mandoc")
    text = subprocess.run(["mandoc", "-T", "ascii", "-O", "width=100", str(page)], capture_output=True, text=True,
                          check=True).stdout
    return re.sub(r".\x08", "", text)


def displays(page: Path) -> list[str]:
    """The lines of the page's literal displays (.EX ... .EE): examples and output, as a reader copies them."""
    roff = page.read_text(encoding="utf-8").replace("\\\n", "")
    lines = []
    for block in re.findall(r"^\.EX\n(.*?)^\.EE$", roff, re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            for escape, plain in (("\\-", "-"), ("\\(aq", "'"), ("\\(ga", "`"), ("\\&", ""), ("\\e", "\\")):
                line = line.replace(escape, plain)
            lines.append(line)
    return lines


def page_of(name: str) -> Path:
    """The page that documents the command ``name``."""
    found = [path for path, manual in zip(PAGES, MANUALS, strict=True) if name in manual.commands]
    assert len(found) == 1, f"{name} is on {len(found)} pages"
    return found[0]


def section(text: str, title: str) -> str:
    found = re.search(rf"^{title}\n(.*?)(?=^[A-Z][A-Z ]+\n|\Z)", text, re.MULTILINE | re.DOTALL)
    assert found, f"the page has no {title} section"
    return found.group(1)


def commands() -> list:
    from qmpctl.cli.spec import COMMANDS

    return [(" ".join(command.words), command) for command in COMMANDS]


def test_committed_page_is_what_the_generator_makes():
    assert PAGE.read_text(encoding="utf-8") == generate.generate(), (
        "man/qmpctl.1 is out of date with qmpctl/cli/spec.py, man/pages/ or README.md: "
        "run .venv/bin/python man/generate.py")


def test_every_committed_page_is_what_the_generator_makes_and_no_other_is_there():
    pages = generate.generate_all()
    assert sorted(pages) == sorted(PAGES)
    for path, text in pages.items():
        assert path.read_text(encoding="utf-8") == text, (
            f"man/{path.name} is out of date with qmpctl/cli/spec.py, man/pages/ or README.md: "
            "run .venv/bin/python man/generate.py")
    assert generate.stale_pages(pages) == []
    assert sorted(readme.page_sources()) == sorted(generate.source_file(manual) for manual in MANUALS)


def test_every_command_is_on_exactly_one_page():
    listed = [name for manual in MANUALS for name in manual.commands]
    assert sorted(listed) == sorted(name for name, _ in commands()), "add the command to a Manual in spec.py"
    assert MANUALS[0].name == "qmpctl" and MANUALS[0].section == "1"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_mandoc_lint_is_clean(page):
    _need("mandoc")
    proc = subprocess.run(["mandoc", "-T", "lint", "-W", "style", str(page)], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_groff_has_no_warnings(page):
    _need("groff")
    proc = subprocess.run(["groff", "-ww", "-man", "-z", str(page)], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (0, "")


def _man(page: Path) -> subprocess.CompletedProcess:
    _need("man")
    return subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, env={"MANWIDTH": "100",
                          "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})


def test_man_renders_it():
    proc = _man(PAGE)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    for title in ("NAME", "SYNOPSIS", "ADDRESSES", "COMMANDS", "ENVIRONMENT", "EXIT STATUS", "GUARANTEES",
                  "EXAMPLES", "MANUAL PAGES", "SEE ALSO"):
        assert re.search(rf"^{title}$", proc.stdout, re.MULTILINE), title


@pytest.mark.parametrize("page", PAGES[1:], ids=PAGE_IDS[1:])
def test_man_renders_every_page_and_the_index_lists_it(page):
    proc = _man(page)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    for title in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert re.search(rf"^{title}$", proc.stdout, re.MULTILINE), title
    name, _, number = page.name.rpartition(".")
    assert f"{name}({number})" in section(rendered(PAGE), "MANUAL PAGES")


def test_every_command_argument_and_option_is_described():
    common = section(rendered(), "COMMON OPTIONS")
    for name, command in commands():
        described = section(rendered(page_of(name)), "COMMANDS") + common
        usage = f"qmpctl {name} [OPTIONS]" if all_options(command) else f"qmpctl {name} ["
        assert usage in described, name
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
    """The pages show only examples test_docs.py runs, and the index every guarantee the README backs with a test."""
    text = rendered()
    documents = readme.documents()
    tested = {line.strip() for document in documents for block in document.blocks
              if block.info in (readme.RUNNABLE, readme.CRONTAB) for line in block.text.splitlines()}
    example_lines = [line.strip() for line in section(text, "EXAMPLES").splitlines() if line.startswith(" " * 11)]
    assert example_lines and set(example_lines) <= tested
    shown = [line.strip() for page in PAGES for line in displays(page) if re.match(r"\s*qmpctl\s", line)]
    assert len(shown) > 40
    help_examples = {" ".join(line.split()) for _, command in commands() for line in command.example.split(";  ")}
    assert {line for line in shown if line not in tested | help_examples} == set(), \
        "a page shows a qmpctl command no test runs"
    guarantees = " ".join(section(text, "GUARANTEES").split())
    for promise in ("Bounded time.", "No half-attached disks.", "No overwritten backups.", "No stray jobs"):
        assert promise in guarantees


def test_pyproject_installs_every_page_where_man_finds_it():
    """The wheel's data files are pyproject.toml's list: every generated page, under share/man/manN."""
    import tomllib

    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    listed = {(folder, Path(file).name) for folder, files in data_files.items() if folder.startswith("share/man/")
              for file in files}
    assert listed == {(f"share/man/man{manual.section}", f"{manual.name}.{manual.section}") for manual in MANUALS}
    for files in data_files.values():
        assert all((REPO / file).is_file() for file in files)


@pytest.mark.parametrize("manual", MANUALS, ids=PAGE_IDS)
def test_the_wheel_installs_every_page_under_share_man(manual):
    """setup-host installs qmpctl non-editable, as users do: its RECORD must list each page where man finds it."""
    site_packages = sysconfig.get_paths()["purelib"]
    installed_copies = list(importlib.metadata.distributions(name="qmpctl", path=[site_packages]))
    if not installed_copies:
        pytest.skip("qmpctl is not installed in this environment (run tests/setup-host)")
    wanted = f"share/man/man{manual.section}/{manual.name}.{manual.section}"
    pages = [file for file in installed_copies[0].files or [] if str(file).endswith(wanted)]
    assert pages, f"the installed qmpctl does not carry {wanted} (run tests/setup-host after changing pyproject.toml)"
    assert Path(installed_copies[0].locate_file(pages[0])).is_file()


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


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_no_roff_request_is_printed_as_text(page):
    """A request protected as text (``\\&.br``) or folded into a line shows up in the page instead of acting."""
    leaked = re.findall(r"(?<![\w/.-])\.(?:br|PP|TP|IP|SH|SS|EX|EE|RS|RE)\b", rendered(page))
    assert leaked == [], f"{page.name}: roff requests printed as text: {leaked}"
