"""How the operator commands print: tables that fit the terminal, tab-separated rows in a pipe.

A list command describes its columns once (`Column`) and hands its rows to `print_rows`:

- on a terminal, a table no wider than the terminal. A cell stays whole on one line (an id, a
  type, a handler name, a time) unless its column may `wrap` at spaces (a list of handlers) or is
  `prose` (an error message). Columns with a `drop` rank are added from the lowest rank up, each
  only if rich then renders every word whole within the width: a narrow terminal gets fewer
  columns, never a cut id. (Only when even the columns that stay are too wide are they folded onto
  more lines, still whole.)
- anywhere else (a pipe, a file), a header line of the `--json` names, then one tab-separated line
  per row, as `gh` does: every value whole, on one line.

rich decides what a terminal is: `TTY_COMPATIBLE=1` asks for the table in a pipe, `=0` for the rows.
A new list command (say `oa-webhooks handlers`) defines its columns and calls `print_rows` too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from rich import box
from rich.cells import cell_len
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from rich.console import Console, JustifyMethod

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Column(Generic[R]):
    """One column of a list: its headers, its cell, and how it gives way when the terminal is narrow."""

    header: str  # in the table
    name: str  # in the tab-separated header line: the key `--json` uses
    cell: Callable[[R], str | Text]  # in the table
    value: Callable[[R], str] | None = None  # in the tab-separated rows; by default the cell's text
    drop: int = 0  # 0: always shown; otherwise shown if it fits, the lowest rank first
    wrap: bool = False  # may wrap between words (never inside one)
    prose: bool = False  # free text (an error message): may wrap anywhere
    min_width: int | None = None  # a prose column that would be narrower is left out instead
    max_width: int | None = None  # wrap a long text at this width
    justify: JustifyMethod = "left"

    def text(self, row: R) -> str:
        """The tab-separated value: whole, on one line."""
        raw = self.value(row) if self.value is not None else self.cell(row)
        plain = raw.plain if isinstance(raw, Text) else raw
        return " ".join(plain.split()) if any(c in plain for c in "\t\n\r") else plain


@dataclass(frozen=True, slots=True)
class _Titles:
    title: str | None = None
    caption: str | None = None
    show_header: bool = True


def _table(columns: Sequence[Column[R]], rows: Sequence[R], titles: _Titles, *, fold: bool = False) -> Table:
    # gh's look: no borders, a rule under the header, two spaces between columns.
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
        header_style="bold",
        title=titles.title,
        caption=titles.caption,
        show_header=titles.show_header,
    )
    for c in columns:
        table.add_column(
            c.header,
            justify=c.justify,
            no_wrap=not (c.wrap or c.prose or fold),
            overflow="fold",
            min_width=c.min_width,
            max_width=c.max_width,
        )
    for row in rows:
        table.add_row(*(c.cell(row) for c in columns))
    return table


def _fits(console: Console, columns: Sequence[Column[R]], rows: Sequence[R], titles: _Titles) -> bool:
    """True when rich renders the table within the console's width with every word whole (prose aside)."""
    lines = list(Segment.split_lines(console.render(_table(columns, rows, titles), console.options)))
    if any(Segment.get_line_length(line) > console.width for line in lines):
        return False
    rendered = "\n".join("".join(segment.text for segment in line) for line in lines)
    texts = [c.header for c in columns] + [
        _plain(c.cell(row)) for row in rows for c in columns if not c.prose
    ]
    return all(word in rendered for text in texts for word in text.split())


def _widest(columns: Sequence[Column[R]], rows: Sequence[R]) -> list[R]:
    """The rows that hold each column's longest cell and longest word.

    rich sizes each column by these alone, so they fit when all rows do; trying every row of a
    thousand, once per column, would take seconds.
    """
    chosen: dict[int, R] = {}
    for c in columns:
        texts = [(i, _plain(c.cell(row))) for i, row in enumerate(rows)]
        for measure in (cell_len, lambda text: max(map(cell_len, text.split()), default=0)):
            if texts:
                i = max(texts, key=lambda item: measure(item[1]))[0]
                chosen[i] = rows[i]
    return [chosen[i] for i in sorted(chosen)]


def _plain(cell: str | Text) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def fitted_table(
    console: Console,
    columns: Sequence[Column[R]],
    rows: Sequence[R],
    *,
    title: str | None = None,
    caption: str | None = None,
    show_header: bool = True,
) -> Table:
    """The table of `rows` for `console`: the columns without `drop`, then each other one that fits."""
    titles = _Titles(title, caption, show_header)
    widest = _widest(columns, rows)
    kept = [c for c in columns if not c.drop]
    for candidate in sorted((c for c in columns if c.drop), key=lambda c: c.drop):
        trial = [c for c in columns if c is candidate or any(c is k for k in kept)]
        if _fits(console, trial, widest, titles):
            kept = trial
    if _fits(console, kept, widest, titles):
        return _table(kept, rows, titles)
    # Even the columns that always show are wider than the terminal: fold them, never cut them.
    return _table(kept, rows, titles, fold=True)


def print_rows(console: Console, columns: Sequence[Column[R]], rows: Sequence[R], *, title: str = "") -> None:
    """A table on a terminal (with `title` above it); tab-separated lines anywhere else."""
    if console.is_terminal:
        if title:
            console.print(title, markup=False, highlight=False)
        console.print(fitted_table(console, columns, rows))
        return
    lines = ["\t".join(c.name for c in columns)]
    lines += ["\t".join(c.text(row) for c in columns) for row in rows]
    sys.stdout.write("".join(f"{line}\n" for line in lines))


def hint(console: Console, text: str) -> None:
    """A line for the reader under a table (a count, what to do next); nothing in a pipe."""
    if console.is_terminal:
        console.print(text, markup=False, highlight=False)


def when(iso_time: str | None) -> str:
    """An ISO-8601 UTC time as a table shows it: to the second, a space between date and time."""
    return (iso_time or "")[:19].replace("T", " ")
