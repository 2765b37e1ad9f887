"""Rich progress bars on a terminal, fed by the engine's progress events."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .events import Event, ProgressEvent


class ProgressDisplay:
    """One bar per file being transferred; does nothing when `enabled` is false."""

    def __init__(self, console: Console, *, enabled: bool) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("{task.fields[label]}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[source]}", markup=False),
            console=console,
            transient=False,
        )
        self._tasks: dict[tuple[str, str], TaskID] = {}

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.enabled:
            self._progress.stop()

    def listener(self, event: Event) -> None:
        if not self.enabled or not isinstance(event, ProgressEvent) or not event.file:
            return
        key = (event.model, event.file)
        source = f"{event.source} {event.gateway or ''}".strip()
        task = self._tasks.get(key)
        if task is None:
            if event.status not in ("attempting", "downloading"):
                return
            task = self._progress.add_task(
                "", total=event.total_bytes, label=f"{event.model}/{event.file}", source=source
            )
            self._tasks[key] = task
        if event.status == "success":
            size = event.total_bytes or event.bytes_downloaded
            self._progress.update(task, total=size, completed=size, source=f"✓ {source}")
        elif event.status == "error":
            self._progress.update(task, source=f"✗ {source}: retrying or next source")
        else:
            self._progress.update(
                task, total=event.total_bytes, completed=event.bytes_downloaded, source=source
            )
