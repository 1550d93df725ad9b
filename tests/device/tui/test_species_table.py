"""The species table is rebuilt only when what it shows changes (words or styles)."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual.app import App, ComposeResult

from device.tui.widgets.review_table import SpeciesTable


class CountingTable(SpeciesTable):
    def __init__(self):
        super().__init__()
        self.rebuilds = 0

    def clear(self, columns: bool = False):
        if not columns:
            self.rebuilds += 1
        return super().clear(columns=columns)


class Host(App):
    def compose(self) -> ComposeResult:
        yield CountingTable()


def frog_row(calling: bool, name_style: str = "bold"):
    marks = Text("")
    marks.append("\n" + ("♪ now" if calling else ""), style="bold" if calling else "")
    name = Text("Brilliant-thighed Poison Frog", style=name_style)
    name.append("\nAllobates femoralis", style="italic")
    return ("allfem1", (marks, "🐸 frog", name, "█████▎ 0.89", "3×", "06:10–06:14", ""), 2)


def test_unchanged_rows_are_not_rebuilt_and_any_visible_change_is():
    async def main():
        app = Host()
        async with app.run_test(size=(100, 30)) as pilot:
            table = app.query_one(CountingTable)
            await pilot.pause()
            counts = []
            table.replace_rows([frog_row(calling=True)])
            counts.append(table.rebuilds)
            table.replace_rows([frog_row(calling=True)])  # equal, newly built objects: the 5 s mark refresh
            counts.append(table.rebuilds)
            table.replace_rows([frog_row(calling=False)])  # '♪ now' faded
            counts.append(table.rebuilds)
            table.replace_rows([frog_row(calling=False, name_style="bold underline")])  # a style alone
            counts.append(table.rebuilds)
            return counts, table.row_count

    counts, rows = asyncio.run(main())
    assert counts == [1, 1, 2, 3]
    assert rows == 1
