"""A stage's live bar on stderr (stdout stays clean for --json): label, done / total, a line of counts, time."""

from __future__ import annotations


class StageBar:
    """`with StageBar(label, total) as bar: bar.advance(info)`; `show=False` draws nothing."""

    def __init__(self, label: str, total: int, *, completed: int = 0, info: str = "", show: bool = True):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), disable=not show,
                            console=Console(stderr=True))
        self.task = self.bar.add_task(label, total=total, completed=completed, info=info)

    def advance(self, info: str) -> None:
        self.bar.update(self.task, advance=1, info=info)

    def __enter__(self) -> StageBar:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.bar.stop()
        return False
