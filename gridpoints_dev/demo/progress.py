"""The demo's progress on stderr: one line per finished step, notes, and bars or a spinner
while a step runs (on a terminal only; a log gets the step lines)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


class Reporter:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.started_at = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def step(self, text: str) -> None:
        self.console.print(f"[dim]{self.elapsed():6.1f}s[/] [green]✓[/] {text}", highlight=False)

    def note(self, text: str) -> None:
        self.console.print(f"        [yellow]•[/] {text}", highlight=False)

    def progress(self) -> Progress:
        return Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        )
