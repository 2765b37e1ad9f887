"""The server's downloads: one long-lived Fetcher, one task per model, their live progress."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..catalog import ModelSpec
from ..config import Settings
from ..engine import Fetcher, ModelResult
from ..errors import ModelfetchError, error_report, grouped_error_reports
from ..events import AttemptEvent, Event, ProgressEvent, now_ms
from ..inventory import ModelStatus, inspect_model
from ..records import Records
from ..store import Store
from .broadcast import Broadcaster, Message
from .prometheus import ServerMetrics

log = logging.getLogger(__name__)

StartStatus = Literal["started", "joined"]


def result_message(name: str, result: ModelResult | None, error: BaseException | None) -> Message:
    """The `model_download_result` broadcast of a finished download."""
    files = sorted(result.files, key=lambda f: f.path) if result is not None else []
    errors = grouped_error_reports(name, result.errors) if result is not None else []
    if error is not None:
        errors.append(error_report(name, error))
    return {
        "type": "model_download_result",
        "modelId": name,
        "ok": not errors,
        "files": [f.to_dict() for f in files],
        "errors": errors,
        "timestamp": now_ms(),
    }


def _inspect_in_thread(models_dir: Path, specs: Sequence[ModelSpec]) -> list[ModelStatus]:
    """Inspect models on a private event loop: run in a worker thread, so even the small
    reads (stat, stamps, manifest) stay off the server's loop."""

    async def inspect_all() -> list[ModelStatus]:
        store = Store(models_dir)
        return [await inspect_model(store, spec) for spec in specs]

    return asyncio.run(inspect_all())


class Downloads:
    """Starts and joins model downloads, remembers each file's last progress event.

    Every engine event goes through `listener`: it feeds the Prometheus metrics, keeps the
    last progress event of each file, and broadcasts progress and attempt messages.
    """

    def __init__(
        self, settings: Settings, broadcaster: Broadcaster, metrics: ServerMetrics
    ) -> None:
        self.settings = settings
        self._broadcaster = broadcaster
        self._metrics = metrics
        self._fetcher: Fetcher | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started: dict[str, int] = {}
        self._progress: dict[str, dict[str, Message]] = {}
        self._results: dict[str, Message] = {}

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the Fetcher (it opens the records database of the models dir)."""
        self._fetcher = await asyncio.to_thread(Fetcher, self.settings, listeners=[self.listener])

    async def close(self) -> None:
        """Cancel running downloads (their partial data is kept) and close the Fetcher."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        fetcher, self._fetcher = self._fetcher, None
        if fetcher is not None:
            await fetcher.aclose()  # also stops its shared per-file downloads

    @property
    def fetcher(self) -> Fetcher:
        if self._fetcher is None:
            raise RuntimeError("the download service is not running")
        return self._fetcher

    @property
    def records(self) -> Records | None:
        return self._fetcher.records if self._fetcher is not None else None

    # -- downloads ------------------------------------------------------------------------

    def task(self, name: str) -> asyncio.Task[None] | None:
        """The running download of `name`, if any (await it to wait for the result)."""
        return self._tasks.get(name)

    def start_download(self, name: str) -> StartStatus:
        """Start downloading model `name`, or join the download already running.

        Raises UnknownModel before anything starts.
        """
        spec = self.settings.model(name)
        if name in self._tasks:
            return "joined"
        fetcher = self.fetcher
        started = now_ms()
        self._started[name] = started
        self._progress[name] = {}
        self._tasks[name] = asyncio.create_task(
            self._run(fetcher, spec), name=f"modelfetch-download-{name}"
        )
        self._broadcaster.publish(
            {"type": "model_download_started", "modelId": name, "startedAt": started}
        )
        return "started"

    async def _run(self, fetcher: Fetcher, spec: ModelSpec) -> None:
        name = spec.name
        result: ModelResult | None = None
        error: BaseException | None = None
        try:
            result = await fetcher.pull_model(spec)
        except asyncio.CancelledError:
            self._tasks.pop(name, None)
            raise
        except ModelfetchError as exc:
            error = exc
            log.warning("download of %s failed: %s", name, exc)
        except Exception as exc:
            error = exc
            log.exception("download of %s failed unexpectedly", name)
        self._tasks.pop(name, None)
        message = result_message(name, result, error)
        self._results[name] = message
        if not message["ok"]:
            log.warning("download of %s: %d error(s)", name, len(message["errors"]))
        self._broadcaster.publish(message)

    # -- engine events --------------------------------------------------------------------

    def listener(self, event: Event) -> None:
        """Engine listener: metrics, last progress per file, broadcast. Never raises."""
        try:
            self._metrics.listener(event)
            if isinstance(event, ProgressEvent):
                data = event.to_dict()
                if event.file:
                    self._progress.setdefault(event.model, {})[event.file] = data
                key = (event.model, event.file) if event.status == "downloading" else None
                self._broadcaster.publish(data, coalesce=key)
            elif isinstance(event, AttemptEvent):
                self._broadcaster.publish({"type": "model_download_attempt", **event.to_dict()})
        except Exception:
            log.exception("server event listener failed")

    # -- views ----------------------------------------------------------------------------

    async def models(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Each model's on-disk state plus `downloading`, `progress` and `last_result`."""
        specs = (
            [self.settings.model(n) for n in names]
            if names is not None
            else list(self.settings.models.values())
        )
        statuses = await asyncio.to_thread(_inspect_in_thread, self.settings.models_dir, specs)
        return [
            {
                **status.to_dict(),
                "downloading": status.name in self._tasks,
                "progress": dict(self._progress.get(status.name, {})),
                "last_result": self._results.get(status.name),
            }
            for status in statuses
        ]

    def active(self) -> list[dict[str, Any]]:
        """Running downloads with the last progress event of each of their files."""
        return [
            {
                "modelId": name,
                "startedAt": self._started.get(name),
                "progress": dict(self._progress.get(name, {})),
            }
            for name in sorted(self._tasks)
        ]

    async def snapshot(self) -> Message:
        """What a WebSocket client gets first: every model, and the running downloads.

        When the models cannot be inspected (a damaged manifest, say) the snapshot says so
        in `error` and lists none, rather than refusing the client its progress events.
        """
        snapshot: Message = {"type": "snapshot", "models": [], "downloads": []}
        try:
            snapshot["models"] = await self.models()
        except ModelfetchError as exc:
            snapshot["error"] = str(exc)
        except Exception:
            log.exception("could not inspect the models for a snapshot")
            snapshot["error"] = "internal error"
        snapshot["downloads"] = self.active()
        return snapshot
