"""Read qmpctl's hand-written documentation as data: sections, fenced blocks and tables.

The hand-written sources are README.md (the front page) and the manual pages'
texts, ``man/pages/NAME.md``. The man page generator (``generate.py``) renders
them, and the doc tests (``tests/project/test_docs.py``) run their example
blocks, so both read them through this module and agree on what a section, a
block and a table are.

Only the Markdown these files use is understood: ATX headings (``#``), fenced
code blocks (three backticks and an info string), pipe tables, ``-`` lists
and paragraphs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
PAGES = Path(__file__).resolve().parent / "pages"
"""The hand-written text of each manual page, ``NAME.md``."""

RUNNABLE = "sh"
"""Info string of an example that tests/project/test_docs.py runs as a bash script."""
CRONTAB = "crontab"
"""Info string of crontab lines whose commands tests/project/test_docs.py runs as cron would."""

_EXPECTED_EXIT = re.compile(r"#\s*exit:\s*(\d+)\s*$")
_HEADING = re.compile(r"(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block."""

    info: str
    text: str
    line: int
    """1-based line number of the opening fence in its file."""
    section: str
    """Title of the ``##`` section the block is in."""
    heading: str
    """Title of the nearest heading above the block (the section, or a ``###`` in it)."""
    source: str = "README.md"
    """The file, relative to the repository: ``README.md`` or ``man/pages/NAME.md``."""

    @property
    def expected_exit(self) -> int:
        """0, or N when the block's first line is ``# exit: N`` (the example shows a failure)."""
        first = self.text.splitlines()[0] if self.text else ""
        found = _EXPECTED_EXIT.fullmatch(first.strip())
        return int(found.group(1)) if found else 0


@dataclass
class Section:
    """A heading and the Markdown lines under it, up to the next heading of the same or a higher level."""

    level: int
    title: str
    line: int
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def intro(self) -> str:
        """The lines before the section's first subheading."""
        out = []
        fence = False
        for line in self.lines:
            if line.startswith("```"):
                fence = not fence
            if not fence and _HEADING.fullmatch(line):
                break
            out.append(line)
        return "\n".join(out)


class Readme:
    """README.md, or another of the hand-written sources, parsed once."""

    def __init__(self, text: str, source: str = "README.md") -> None:
        self.source = source
        self.text = text
        self.lines = text.splitlines()
        self.sections = self._sections()
        self.blocks = self._blocks()

    @classmethod
    def load(cls, path: Path = README) -> "Readme":
        return cls(path.read_text(encoding="utf-8"), str(path.relative_to(README.parent)))

    def _headings(self) -> list[tuple[int, int, str]]:
        """(line index, level, title) of every heading outside code blocks."""
        found = []
        fence = False
        for index, line in enumerate(self.lines):
            if line.startswith("```"):
                fence = not fence
                continue
            heading = None if fence else _HEADING.fullmatch(line)
            if heading:
                found.append((index, len(heading.group(1)), heading.group(2)))
        return found

    def _sections(self) -> list[Section]:
        headings = self._headings()
        sections = []
        for position, (index, level, title) in enumerate(headings):
            end = len(self.lines)
            for later_index, later_level, _ in headings[position + 1:]:
                if later_level <= level:
                    end = later_index
                    break
            sections.append(Section(level, title, index + 1, self.lines[index + 1:end]))
        return sections

    def section(self, title: str) -> Section:
        """The section with this exact title; KeyError names what exists."""
        for section in self.sections:
            if section.title == title:
                return section
        raise KeyError(f"{self.source} has no section {title!r}; it has {[s.title for s in self.sections]}")

    def _blocks(self) -> list[Block]:
        blocks = []
        section = heading = ""
        opened: tuple[int, str] | None = None
        body: list[str] = []
        for index, line in enumerate(self.lines):
            if opened is None:
                heading_match = _HEADING.fullmatch(line)
                if heading_match:
                    heading = heading_match.group(2)
                    if len(heading_match.group(1)) <= 2:
                        section = heading
                elif line.startswith("```"):
                    opened, body = (index + 1, line[3:].strip()), []
            elif line.startswith("```"):
                blocks.append(Block(opened[1], "\n".join(body), opened[0], section, heading, self.source))
                opened = None
            else:
                body.append(line)
        if opened is not None:
            raise ValueError(f"{self.source}:{opened[0]}: a code block is never closed")
        return blocks

    def runnable(self) -> list[Block]:
        return [block for block in self.blocks if block.info == RUNNABLE]


def page_sources() -> list[Path]:
    """The manual pages' hand-written texts, in name order."""
    return sorted(PAGES.glob("*.md"))


def documents() -> list[Readme]:
    """Every hand-written source: README.md first, then each page's text."""
    return [Readme.load()] + [Readme.load(path) for path in page_sources()]


def split_row(line: str) -> list[str]:
    """The cells of a pipe-table row; ``\\|`` is a literal bar."""
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def tables(markdown: str) -> list[list[list[str]]]:
    """Every pipe table in ``markdown``: a list of rows (the header row first), each a list of cells."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in markdown.splitlines() + [""]:
        if line.lstrip().startswith("|"):
            cells = split_row(line)
            if not all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def code_spans(markdown: str) -> list[str]:
    """The text of every inline code span (single backticks)."""
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", markdown)
