"""Rich output that stays whole: tables are never cut to 80 columns in CI logs or pipes.

Off a terminal (a pipe, a file, a CI log) there is no width to fit: the console is as wide as
the text needs. On a terminal, the short columns of a table (numbers, statuses, names) keep
their full width however narrow the window; only long text wraps, and a table still wider than
the window is printed whole for the terminal to wrap, never cropped.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

UNBOUNDED = 10_000  # columns: wider than any table or line autolabel prints
SHORT = 24  # a column whose cells are all at most this wide is never narrowed


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); off a terminal, wide enough for anything printed."""
    plain = Console(stderr=stderr)
    if plain.is_terminal:
        return plain
    return Console(stderr=stderr, width=UNBOUNDED)


def print_table(out: Console, table: Table) -> None:
    """Print `table` with its short columns whole (see whole_cells) and no line cropped."""
    out.print(whole_cells(table), crop=False)


def whole_cells(table: Table) -> Table:
    """Give every short column (numbers, statuses, ids) its widest cell as its minimum width, so a
    narrow terminal wraps the table's long text instead of cutting a number to `0.8…`."""
    for column in table.columns:
        cells = [column.header, *column.cells]
        widest = max((_width(c) for c in cells), default=0)
        if widest <= SHORT:
            column.min_width = widest
            column.no_wrap = True
    return table


def _width(cell: object) -> int:
    if isinstance(cell, str):
        return Text.from_markup(cell).cell_len
    if isinstance(cell, Text):
        return cell.cell_len
    return 0
