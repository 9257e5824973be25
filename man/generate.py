"""Generate man/qmpctl.1 from the command declaration and README.md, so the page cannot drift from either.

Commands, arguments, options, defaults and their environment variables come
from the command declaration (qmpctl/cli/spec.py). Everything hand-written
comes from README.md, the one place people edit: the description, addresses, environment, output, exit codes,
guarantees, troubleshooting and the examples (the README's runnable blocks,
which tests/project/test_docs.py executes). ``qmpctl.1.in`` beside this file holds the
page's frame with ``@NAME@`` placeholders.

Usage: .venv/bin/python man/generate.py [--check]
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from qmpctl import __version__  # noqa: E402
from qmpctl.cli.spec import COMMANDS, Argument, Command, Option, all_options  # noqa: E402
from readme import CRONTAB, RUNNABLE, Readme, split_row  # noqa: E402

TEMPLATE = HERE / "qmpctl.1.in"
PAGE = HERE / "qmpctl.1"

EXAMPLE_SECTIONS = ("First steps", "Install", "Commands", "Lifecycle and events", "Performance", "Block devices",
                    "Guest agent", "libvirt users", "Cron and CI recipes")
"""README sections whose runnable blocks make the EXAMPLES section, in this order."""


# --- roff text ----------------------------------------------------------------------


def escape(text: str) -> str:
    """Plain text for roff: backslashes are escaped; nothing else is special inside a line."""
    return text.replace("\\", "\\e")


def escape_code(text: str) -> str:
    """Literal text (commands, options, paths) that must survive copy and paste: ASCII dashes and quotes."""
    return escape(text).replace("-", "\\-").replace("'", "\\(aq").replace("`", "\\(ga")


def escape_options(text: str) -> str:
    """Prose from help texts: escaped, with the dashes of option names as real dashes."""
    return re.sub(r"(?<![\w-])(--?[A-Za-z][\w-]*)", lambda m: m.group(1).replace("-", "\\-"), escape(text))


def inline(markdown: str) -> str:
    """One paragraph of README Markdown as roff: code spans bold and literal, **bold**, links as their text."""
    out = []
    bold = False
    for index, piece in enumerate(re.split(r"`([^`]+)`", markdown)):
        if index % 2:
            out.append(f"\\fB{escape_code(piece)}\\fP")  # \fP: back to the font around it (bold inside **)
            continue
        piece = escape_options(re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", piece))
        words = piece.split("**")
        for position, word in enumerate(words):
            if position:
                bold = not bold
                out.append("\\fB" if bold else "\\fR")
            out.append(word)
    return "".join(out)


def lines_safe(text: str) -> str:
    """Protect lines of text (never requests) that would start with a roff control character."""
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def text_line(markdown: str) -> str:
    """A paragraph of README Markdown as one safe roff text line."""
    return lines_safe(inline(markdown))


def example(code: str) -> str:
    return ".PP\n.RS 4\n.EX\n" + lines_safe("\n".join(escape_code(line) for line in code.split("\n"))) + "\n.EE\n.RE"


def fold(line: str, width: int = 78) -> str:
    """Break a long input line at spaces with escaped newlines: roff joins them back into the same line."""
    if len(line) <= width or line.startswith('.\\"'):
        return line
    pieces = []
    while len(line) > width:
        cut = line.rfind(" ", 1, width)
        if cut <= 0:
            break
        pieces.append(line[: cut + 1] + "\\")
        line = line[cut + 1:]
    return "\n".join(pieces + [line])


def tidy(page: str) -> str:
    """Fold long lines, and drop paragraph macros that would follow a heading or another paragraph macro."""
    out: list[str] = []
    for line in page.split("\n"):
        if line == ".PP" and out and out[-1].startswith((".SH", ".SS", ".PP")):
            continue
        out.append(line)
    return "\n".join(fold(line) for line in out)


# --- README Markdown to roff -------------------------------------------------------------


def markdown_chunks(markdown: str) -> Iterable[tuple[str, object]]:
    """Split Markdown into ("heading", text), ("code", text), ("table", rows), ("list", items), ("para", text)."""
    lines = markdown.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.strip():
            index += 1
        elif line.startswith("```"):
            end = lines.index("```", index + 1)
            yield "code", "\n".join(lines[index + 1:end])
            index = end + 1
        elif line.startswith("#"):
            yield "heading", line.lstrip("#").strip()
            index += 1
        elif line.lstrip().startswith("|"):
            rows = []
            while index < len(lines) and lines[index].lstrip().startswith("|"):
                cells = split_row(lines[index])
                if not all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):
                    rows.append(cells)
                index += 1
            yield "table", rows[1:]
        elif line.startswith("- "):
            items: list[str] = []
            while index < len(lines) and (lines[index].startswith("- ") or lines[index].startswith("  ")):
                if lines[index].startswith("- "):
                    items.append(lines[index][2:].strip())
                else:
                    items[-1] += " " + lines[index].strip()
                index += 1
            yield "list", items
        else:
            paragraph = []
            while index < len(lines) and lines[index].strip() and not lines[index].startswith(("```", "#", "|", "- ")):
                paragraph.append(lines[index].strip())
                index += 1
            yield "para", " ".join(paragraph)


def render(markdown: str) -> str:
    """A README section as roff: paragraphs, subheadings, lists, two-column tables and literal blocks."""
    out = []
    for kind, value in markdown_chunks(markdown):
        if kind == "heading":
            out.append(f".SS {inline(str(value))}")
        elif kind == "code":
            out.append(example(str(value)))
        elif kind == "table":
            out.append(tagged_rows(value))  # type: ignore[arg-type]
        elif kind == "list":
            out.extend(f".IP \\(bu 2\n{text_line(item)}" for item in value)  # type: ignore[union-attr]
        else:
            out.append(f".PP\n{text_line(str(value))}")
    return "\n".join(out)


def tagged_rows(rows: list[list[str]]) -> str:
    """A two-column table as tagged paragraphs: the first cell is the tag."""
    return "\n".join(f".TP\n{text_line(row[0])}\n{text_line(' '.join(row[1:]))}" for row in rows)


def guarantees(readme: Readme) -> str:
    """The promises of README's Guarantees table; the tests backing them are for developers, not here."""
    rows = [row for table in _tables(readme.section("Guarantees").text) for row in table[1:]]
    return "\n".join(f".IP \\(bu 2\n{text_line(row[0])}" for row in rows)


def _tables(markdown: str) -> list[list[list[str]]]:
    return [[[]] + rows for kind, rows in markdown_chunks(markdown) if kind == "table"]  # type: ignore[operator]


def examples(readme: Readme) -> str:
    out = []
    for title in EXAMPLE_SECTIONS:
        heading = None
        for block in readme.blocks:
            if block.section != title or block.info not in (RUNNABLE, CRONTAB):
                continue
            if block.heading != heading:
                heading = block.heading
                out.append(f".SS {inline(heading)}")
            out.append(example(block.text))
    return "\n".join(out)


# --- the command declaration ----------------------------------------------------------------


def signature(option: Option) -> tuple:
    return (option.flags, option.off_flags, option.help, option.envvar, repr(option.default), option.type)


def value_name(option: Option | Argument) -> str:
    if isinstance(option, Option) and option.type == "choice":
        return "|".join(option.choices)
    return option.metavar or option.name.upper()


def option_words(option: Option) -> str:
    words = ", ".join(f"\\fB{escape_code(name)}\\fR" for name in option.flags)
    if option.off_flags:
        words += " | " + ", ".join(f"\\fB{escape_code(name)}\\fR" for name in option.off_flags)
    if option.type not in ("flag", "switch"):
        words += f" \\fI{escape_code(value_name(option))}\\fR"
    return words


def describe(parameter: Option | Argument) -> str:
    help_text = parameter.help
    notes = []
    if isinstance(parameter, Option):
        default = parameter.default
        if parameter.type == "switch":
            notes.append(f"default: {(parameter.flags if default else parameter.off_flags)[0]}")
        elif parameter.type != "flag" and default not in (None, (), [], False):
            notes.append(f"default: {default:g}" if isinstance(default, float) else f"default: {default}")
        if parameter.envvar:
            notes.append(f"env: {parameter.envvar}")
    if notes:
        help_text += f" [{'; '.join(notes)}]"
    return escape_options(help_text)


def common_options(commands: tuple[Command, ...]) -> set[tuple]:
    """Options that several commands share word for word: described once, under COMMON OPTIONS."""
    counts = Counter(signature(option) for command in commands for option in all_options(command))
    return {key for key, count in counts.items() if count > 1}


def common_section(commands: tuple[Command, ...]) -> str:
    shared = common_options(commands)
    seen: dict[tuple, Option] = {}
    for command in commands:
        for option in all_options(command):
            if signature(option) in shared:
                seen.setdefault(signature(option), option)
    return "\n".join(f".TP\n{option_words(option)}\n{lines_safe(describe(option))}" for option in seen.values())


def command_section(commands: tuple[Command, ...]) -> str:
    shared = common_options(commands)
    out: list[str] = []
    for command in commands:
        name = " ".join(command.words)
        arguments = " ".join(f"\\fI{escape_code(value_name(a))}\\fR" for a in command.arguments)
        out.append(f".SS \\fBqmpctl {escape_code(name)}\\fR [\\fIOPTIONS\\fR] {arguments}".rstrip())
        paragraphs = [command.summary] + [p for p in command.description.split("\n\n") if p]
        for index, paragraph in enumerate(paragraphs):
            out.append(".PP" if index else "")
            out.append(lines_safe(escape_options(" ".join(paragraph.split()))))
        for argument in command.arguments:
            out.append(f".TP\n\\fI{escape_code(value_name(argument))}\\fR\n{lines_safe(describe(argument))}")
        for option in all_options(command):
            if signature(option) not in shared:
                out.append(f".TP\n{option_words(option)}\n{lines_safe(describe(option))}")
        common = [next((f for f in o.flags if f.startswith("--")), o.flags[0]) for o in all_options(command)
                  if signature(o) in shared]
        out.append(".PP\nAnd the common options " + ", ".join(f"\\fB{escape_code(o)}\\fR" for o in common) + ".")
        found = [" ".join(line.split()) for line in command.example.split(";  ")]
        out.append(".PP\nExample" + ("s:" if len(found) > 1 else ":"))
        out.append(example("\n".join(found)))
    return "\n".join(line for line in out if line != "")


def environment(readme: Readme, commands: tuple[Command, ...]) -> str:
    """README's environment table; every variable an option reads must be in it (tests/project/test_manpage.py)."""
    rows = [row for table in _tables(readme.section("Environment").text) for row in table[1:]]
    return tagged_rows(rows)


def generate() -> str:
    readme = Readme.load()
    commands = COMMANDS
    intro = next(text for kind, text in markdown_chunks(readme.section("qmpctl").intro()) if kind == "para")
    parts = {
        "VERSION": __version__,
        "DESCRIPTION": text_line(str(intro)),
        "ADDRESSES": render(readme.section("Addresses").intro()),
        "OUTPUT": render(readme.section("Output").text),
        "COMMON_OPTIONS": common_section(commands),
        "COMMANDS": command_section(commands),
        "ENVIRONMENT": environment(readme, commands),
        "EXIT_STATUS": render(readme.section("Exit codes").text),
        "GUARANTEES": guarantees(readme),
        "DIAGNOSTICS": render(readme.section("Troubleshooting").text),
        "EXAMPLES": examples(readme),
    }
    page = TEMPLATE.read_text(encoding="utf-8")
    for name, value in parts.items():
        page = page.replace(f"@{name}@", value)
    page = tidy(page)
    leftover = re.findall(r"@[A-Z_]+@", page)
    if leftover:
        raise ValueError(f"{TEMPLATE.name}: unknown placeholders {leftover}")
    return page


def main() -> int:
    page = generate()
    if "--check" in sys.argv[1:]:
        if PAGE.read_text(encoding="utf-8") != page:
            print("man/qmpctl.1 is out of date: run .venv/bin/python man/generate.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
