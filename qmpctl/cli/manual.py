"""``qmpctl help [TOPIC]``: the manual page of a command, or the index (declared in :mod:`qmpctl.cli.spec`).

How the page is shown, in this order:

1. stdout is a terminal and ``man`` is installed: ``man -l PAGE``, with its
   pager and width, as ``git help`` does;
2. otherwise the page as plain text on stdout, rendered by ``mandoc -T utf8``,
   else by ``groff -man -T utf8`` (overstrike removed, so a pipe or a file
   gets readable text);
3. with neither installed, a rough rendering of the page's roff source.

The page is the source tree's ``man/NAME.SECTION`` when qmpctl runs from a
checkout (as the tests do), else the installed copy under
``PREFIX/share/man/manSECTION/`` (the wheel's data files).
"""

from __future__ import annotations

import os
import sys

from qmpctl.cli.common import Common, emit
from qmpctl.cli.spec import COMMANDS, MANUALS, Manual
from qmpctl.errors import UsageError

TOOL_TIMEOUT = 30.0
"""How long mandoc or groff may take to render one page."""


def find_manual(topic: list[str]) -> Manual:
    """The page for a command (``agent exec``), a group (``agent``) or a page name (``remote``, ``qmpctl-remote``)."""
    wanted = " ".join(topic)
    if not wanted:
        return MANUALS[0]
    for manual in MANUALS:
        if wanted in manual.commands or wanted in (manual.name, manual.name.removeprefix("qmpctl-")):
            return manual
    for manual in MANUALS:  # a group: the page of its commands
        if any(command.startswith(wanted + " ") for command in manual.commands):
            return manual
    commands = ", ".join(" ".join(command.words) for command in COMMANDS)
    pages = ", ".join(manual.name.removeprefix("qmpctl-") for manual in MANUALS[1:])
    raise UsageError(f"no manual page for {wanted!r}: name a command ({commands}) or a page ({pages}); "
                     "qmpctl help alone shows the index")


PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The qmpctl package's folder: in a checkout, ``man/`` is beside it."""


def candidates(manual: Manual, package: str = PACKAGE) -> list[str]:
    """Where the page may be: the source tree first, then the installation prefixes."""
    filename = f"{manual.name}.{manual.section}"
    found = [os.path.join(os.path.dirname(package), "man", filename)]
    prefixes = [sys.prefix, sys.base_prefix, os.path.expanduser("~/.local"), "/usr/local", "/usr"]
    for prefix in dict.fromkeys(prefixes):
        found.append(os.path.join(prefix, "share", "man", f"man{manual.section}", filename))
    return found


def locate(manual: Manual, package: str = PACKAGE) -> str:
    for path in candidates(manual, package):
        if os.path.isfile(path):
            return path
    raise UsageError(f"the manual page {manual.name}({manual.section}) is not installed; looked in "
                     + ", ".join(candidates(manual, package)))


def show(common: Common, *, topic: list[str] | None) -> int:
    manual = find_manual(list(topic or []))
    path = locate(manual)
    if _on_terminal() and _run_man(path):
        return 0
    emit(render_text(path, _width()), final=True)
    return 0


def _on_terminal() -> bool:
    try:
        return sys.stdout is not None and sys.stdout.isatty()
    except ValueError:  # closed
        return False


def _width() -> int:
    """The terminal's width on a terminal (at most 100 columns, as man does), else 80."""
    if _on_terminal():
        try:
            return max(40, min(100, os.get_terminal_size(sys.stdout.fileno()).columns - 2))
        except OSError:
            pass
    return 80


def _run_man(path: str) -> bool:
    """``man -l PAGE`` on the terminal; False when man is missing or fails (then the text is printed)."""
    import shutil
    import subprocess

    if shutil.which("man") is None:
        return False
    sys.stdout.flush()
    return subprocess.run(["man", "-l", path]).returncode == 0


def render_text(path: str, width: int = 80) -> str:
    """The page as plain text: mandoc's, else groff's, else a rough rendering of the roff source."""
    import shutil
    import subprocess

    tools = (["mandoc", "-T", "utf8", "-O", f"width={width}", path],
             ["groff", "-man", "-T", "utf8", f"-rLL={width}n", path])
    for argv in tools:
        if shutil.which(argv[0]) is None:
            continue
        env = dict(os.environ, GROFF_NO_SGR="1")  # groff: overstrike, not colour escapes
        try:
            proc = subprocess.run(argv, capture_output=True, env=env, timeout=TOOL_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and proc.stdout:
            return _plain(proc.stdout.decode("utf-8", "replace"))
    with open(path, encoding="utf-8") as handle:
        return rough_text(handle.read())


def _plain(text: str) -> str:
    """Without overstrike (``X\\bX`` bold, ``_\\bX`` underline), as ``col -b`` leaves it."""
    import re

    return re.sub(r".\x08", "", text)


def rough_text(roff: str) -> str:
    """Readable text from the man(7) source alone, for a machine without mandoc and groff."""
    import re

    escapes = {"\\-": "-", "\\e": "\\", "\\(aq": "'", "\\(ga": "`", "\\(bu": "*", "\\&": "", "\\ ": " "}

    def clean(text: str) -> str:
        text = re.sub(r"\\f[BIRP]", "", text)
        for escape, plain in escapes.items():
            text = text.replace(escape, plain)
        return text

    out: list[str] = []
    indent = ""
    for line in roff.replace("\\\n", "").split("\n"):
        if line.startswith('.\\"') or line.startswith("'"):
            continue
        if line.startswith("."):
            request, _, rest = line[1:].partition(" ")
            rest = clean(rest.strip('"'))
            if request in ("SH", "SS"):
                out.extend(["", rest if request == "SH" else "  " + rest])
                indent = "    "
            elif request in ("PP", "TP", "IP") and out and out[-1] != "":
                out.append("")
            elif request in ("B", "I", "BR", "IR"):
                out.append(indent + rest)
            continue
        out.append(indent + clean(line))
    return "\n".join(out).strip("\n") + "\n"
