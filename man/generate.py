"""Generate qmpctl's manual pages from the command declaration and their hand-written sources.

Every page in ``MANUALS`` (qmpctl/cli/spec.py) becomes ``man/NAME.SECTION``:

- generated from the declaration: NAME, SYNOPSIS, and the COMMANDS section
  (each command's summary, description, arguments, options, defaults,
  environment variables and ``--help`` example); in the index, qmpctl(1),
  also MANUAL PAGES and COMMON OPTIONS;
- hand-written: ``man/pages/NAME.md``, in the Markdown README.md uses
  (``man/readme.py`` reads both). The text before its first ``##`` heading is
  the DESCRIPTION; each ``##`` heading starts a section (``.SH``, its title in
  capitals), each ``###`` a subsection. A paragraph that is only a placeholder
  puts generated text there: ``@COMMANDS@`` (every page that documents
  commands has it), and in the index ``@MANUALS@``, ``@COMMON_OPTIONS@``,
  ``@EXIT_STATUS@`` and ``@GUARANTEES@`` (README.md's "Exit codes" and
  "Guarantees", which stay on the front page). ``sh`` and ``crontab`` blocks
  are run by tests/project/test_docs.py, like README.md's.

Usage: .venv/bin/python man/generate.py [--check]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Iterable

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from qmpctl import __version__  # noqa: E402
from qmpctl.cli.spec import (  # noqa: E402
    COMMANDS, MANUALS, Argument, Command, Manual, Option, all_options, shared_options,
)
from qmpctl.wire.targets import AGENT, MONITOR  # noqa: E402
from readme import PAGES, Readme, split_row  # noqa: E402

DATE = "2026-11-25"
"""The date on every page (``.TH``): when the page layout last changed, not when it was generated."""


def page_file(manual: Manual) -> Path:
    return HERE / f"{manual.name}.{manual.section}"


def source_file(manual: Manual) -> Path:
    return PAGES / f"{manual.name}.md"


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


# --- Markdown to roff ----------------------------------------------------------------------


def markdown_chunks(markdown: str) -> Iterable[tuple[str, object]]:
    """Split Markdown into ("heading", (level, text)), ("code", text), ("table", rows with the header first),
    ("list", items) and ("para", text)."""
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
            level = len(line) - len(line.lstrip("#"))
            yield "heading", (level, line.lstrip("#").strip())
            index += 1
        elif line.lstrip().startswith("|"):
            rows = []
            while index < len(lines) and lines[index].lstrip().startswith("|"):
                cells = split_row(lines[index])
                if not all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):
                    rows.append(cells)
                index += 1
            yield "table", rows
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


PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


def heading(title: str) -> str:
    """A section title in capitals, as man pages have them; code spans keep their case."""
    pieces = re.split(r"(`[^`]+`)", title)
    return inline("".join(piece if piece.startswith("`") else piece.upper() for piece in pieces))


def render(markdown: str, generated: dict[str, str] | None = None) -> str:
    """Markdown as roff: ``##`` sections, ``###`` subsections, paragraphs, lists, tables, literal blocks;
    a paragraph that is a placeholder becomes the generated text of that name."""
    out = []
    for kind, value in markdown_chunks(markdown):
        if kind == "heading":
            level, title = value  # type: ignore[misc]
            out.append(f".SH {heading(title)}" if level <= 2 else f".SS {inline(title)}")
        elif kind == "code":
            out.append(example(str(value)))
        elif kind == "table":
            out.append(table(value))  # type: ignore[arg-type]
        elif kind == "list":
            out.extend(f".IP \\(bu 2\n{text_line(item)}" for item in value)  # type: ignore[union-attr]
        elif PLACEHOLDER.fullmatch(str(value)):
            name = PLACEHOLDER.fullmatch(str(value)).group(1)  # type: ignore[union-attr]
            if generated is None or name not in generated:
                raise ValueError(f"unknown placeholder @{name}@")
            out.append(generated[name])
        else:
            out.append(f".PP\n{text_line(str(value))}")
    return "\n".join(out)


def table(rows: list[list[str]]) -> str:
    """A table as tagged paragraphs, the first cell the tag. With more than two columns each further cell
    is a line of its own, led by its column's header."""
    header, body = rows[0], rows[1:]
    if len(header) <= 2:
        return tagged_rows(body)
    out = []
    for row in body:
        lines = [f"{inline(name)}: {inline(cell)}" for name, cell in zip(header[1:], row[1:], strict=True) if cell]
        out.append(f".TP\n{text_line(row[0])}\n" + "\n.br\n".join(lines_safe(line) for line in lines))
    return "\n".join(out)


def tagged_rows(rows: list[list[str]]) -> str:
    """A two-column table as tagged paragraphs: the first cell is the tag."""
    return "\n".join(f".TP\n{text_line(row[0])}\n{text_line(' '.join(row[1:]))}" for row in rows)


def guarantees(readme: Readme) -> str:
    """The promises of README's Guarantees table; the tests backing them are for developers, not here."""
    rows = [row for table in _tables(readme.section("Guarantees").text) for row in table[1:]]
    return "\n".join(f".IP \\(bu 2\n{text_line(row[0])}" for row in rows)


def _tables(markdown: str) -> list[list[list[str]]]:
    return [rows for kind, rows in markdown_chunks(markdown) if kind == "table"]  # type: ignore[misc]


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


def global_options() -> set[tuple]:
    """The options every command that talks to a VM takes: described once, in qmpctl(1)."""
    return {signature(option) for kind in (MONITOR, AGENT) for option in shared_options(kind)}


def common_section() -> str:
    seen: dict[tuple, Option] = {}
    for kind in (MONITOR, AGENT):
        for option in shared_options(kind):
            seen.setdefault(signature(option), option)
    return "\n".join(f".TP\n{option_words(option)}\n{lines_safe(describe(option))}" for option in seen.values())


def usage(command: Command) -> str:
    words = []
    for argument in command.arguments:
        name = value_name(argument)
        if argument.variadic and not name.endswith("..."):
            name += "..."
        words.append(f"\\fI{escape_code(name)}\\fR" if argument.required else f"[\\fI{escape_code(name)}\\fR]")
    options = " [\\fIOPTIONS\\fR]" if all_options(command) else ""
    return " ".join([f"\\fBqmpctl {escape_code(' '.join(command.words))}\\fR{options}"] + words)


def command_section(commands: list[Command]) -> str:
    shared = global_options()
    out: list[str] = []
    for command in commands:
        out.append(f".SS {usage(command)}")
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
        if common:
            out.append(".PP\nAnd the common options " + ", ".join(f"\\fB{escape_code(o)}\\fR" for o in common)
                       + " (see qmpctl(1)).")
        found = [" ".join(line.split()) for line in command.example.split(";  ")]
        out.append(".PP\nExample" + ("s:" if len(found) > 1 else ":"))
        out.append(example("\n".join(found)))
    return "\n".join(line for line in out if line != "")


def commands_of(manual: Manual) -> list[Command]:
    by_name = {" ".join(command.words): command for command in COMMANDS}
    return [by_name[name] for name in manual.commands]


def manuals_section() -> str:
    out = []
    for manual in MANUALS[1:]:
        what = escape_options(manual.summary[:1].upper() + manual.summary[1:]) + "."
        if manual.commands:
            what += " Commands: " + ", ".join(f"\\fB{escape_code(name)}\\fR" for name in manual.commands) + "."
        out.append(f".TP\n\\fB{escape_code(manual.name)}\\fR({manual.section})\n{what}")
    return "\n".join(out)


def synopsis(manual: Manual) -> str:
    if manual.name != "qmpctl":
        if not manual.commands:
            return ".B qmpctl\n[\\fIOPTIONS\\fR] \\fB\\-d\\fR \\fIDOMAIN\\fR | \\fB\\-s ssh://\\fR\\fIHOST/PATH\\fR"
        return "\n.br\n".join(usage(command) for command in commands_of(manual))
    return "\n".join([
        ".B qmpctl", ".I COMMAND", "[\\fIOPTIONS\\fR] [\\fIARGUMENTS\\fR]", ".br",
        ".B qmpctl agent", ".I COMMAND", "[\\fIOPTIONS\\fR] [\\fIARGUMENTS\\fR]", ".br",
        ".B qmpctl help", "[\\fITOPIC\\fR]", ".br",
        ".B qmpctl", ".B \\-\\-version", "|", ".B \\-\\-install\\-completion", ".I SHELL", "|",
        ".B \\-\\-show\\-completion", ".I SHELL",
    ])


def see_also(manual: Manual) -> str:
    others = [m for m in MANUALS if m is not manual]
    refs = [f".BR {escape_code(m.name)} ({m.section})" for m in others]
    if manual.name == "qmpctl":
        refs += [".BR qemu\\-system\\-x86_64 (1)", ".BR qemu\\-ga (8)", ".BR virsh (1)"]
    text = ",\n".join(refs)
    return text + "\n.PP\nREADME.md in the source tree has the tests behind each guarantee."


def generate_page(manual: Manual, readme: Readme) -> str:
    source = Readme.load(source_file(manual))
    body = "\n".join(source.lines)
    first, _, body = body.partition("\n")
    if first != f"# {manual.name}":
        raise ValueError(f"{source_file(manual).name}: the first line must be '# {manual.name}'")
    generated = {"COMMANDS": command_section(commands_of(manual))}
    if manual.name == "qmpctl":
        generated.update(MANUALS=manuals_section(), COMMON_OPTIONS=common_section(),
                         EXIT_STATUS=render(readme.section("Exit codes").text), GUARANTEES=guarantees(readme))
    if manual.commands and "@COMMANDS@" not in body:
        raise ValueError(f"{source_file(manual).name}: a page with commands needs a '@COMMANDS@' paragraph")
    description, separator, sections = body.partition("\n## ")
    parts = [
        f'.\\" Generated by man/generate.py from qmpctl/cli/spec.py and man/pages/{manual.name}.md: '
        "edit those, not this page.",
        f'.TH {manual.name.upper().replace("-", chr(92) + "-")} {manual.section} {DATE} "qmpctl {__version__}" '
        f'"{"User Commands" if manual.section == "1" else "Miscellaneous Information Manual"}"',
        ".nr HY 0", ".nh", ".ad l",
        ".SH NAME", f"{escape_code(manual.name)} \\- {escape_options(manual.summary)}",
        ".SH SYNOPSIS", synopsis(manual),
        ".SH DESCRIPTION", render(description, generated),
        render(separator.lstrip("\n") + sections, generated) if separator else "",
        ".SH SEE ALSO", see_also(manual),
    ]
    page = tidy("\n".join(part for part in parts if part) + "\n")
    leftover = PLACEHOLDER.findall(page)
    if leftover:
        raise ValueError(f"{manual.name}.md: unknown placeholders {leftover}")
    return page


def generate_all() -> dict[Path, str]:
    """Every page's file and text."""
    readme = Readme.load()
    return {page_file(manual): generate_page(manual, readme) for manual in MANUALS}


def generate() -> str:
    """qmpctl(1), the index."""
    return generate_page(MANUALS[0], Readme.load())


def stale_pages(pages: dict[Path, str]) -> list[Path]:
    """Pages in man/ no manual declares any more."""
    return sorted(path for path in HERE.glob("qmpctl*.[1-8]") if path not in pages)


def main() -> int:
    pages = generate_all()
    if "--check" in sys.argv[1:]:
        old = [path.name for path, text in pages.items()
               if not path.exists() or path.read_text(encoding="utf-8") != text]
        old += [path.name for path in stale_pages(pages)]
        if old:
            print(f"out of date: {', '.join(old)}: run .venv/bin/python man/generate.py", file=sys.stderr)
            return 1
        return 0
    for path in stale_pages(pages):
        path.unlink()
    for path, text in pages.items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
