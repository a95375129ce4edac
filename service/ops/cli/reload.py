"""Reload under `oa-webhooks run`: watch the handlers' source, so that a saved change runs next.

`oa-webhooks run` restarts the worker when a `.py` file under `workers/` (or under the package of
OA_HANDLERS_PACKAGE, when that is elsewhere) is added, changed or removed. Only `run` does: compose
and production start `oa-webhooks worker`, which never watches anything.

watchfiles (Rust's notify: inotify here, FSEvents on macOS) reports a change within about 50 ms of
the last write of a burst, well inside the 2 s a reload may take. One save can arrive as two reports
(an editor's truncate and write, split across watchfiles' steps on a busy machine), and a save can
leave a file as it was: a file counts as changed only when its content differs from what the worker
last started with, so the worker restarts once per real change. That is read again when a worker
starts (`refresh`): a report read between a save's truncate and its write saw an empty file, but the
worker it restarted imported the whole one, and the report of the write must not restart it again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import queue
import threading
from pathlib import Path


def watched_folders(handlers_package: str) -> list[Path]:
    """The `workers` package's folder, and the handlers package's when it is not inside it.

    Found as the worker will import them (same interpreter, path and working folder), without
    running a handler module.
    """
    folders: list[Path] = []
    for package in ("workers", handlers_package):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):  # the worker will say why it cannot import it
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            folder = Path(location).resolve()
            if not any(folder.is_relative_to(known) for known in folders):
                folders.append(folder)
    return folders


class Watcher:
    """Watches `folders` for `.py` changes in a thread; `changed()` says what changed since last asked."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders
        self._changes: queue.SimpleQueue[set[Path]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._seen: dict[Path, bytes | None] = {}  # each reported file's content digest (None: gone)
        self._thread = threading.Thread(target=self._watch, name="reload", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def _watch(self) -> None:
        from watchfiles import PythonFilter, watch  # noqa: PLC0415 - only `run` with reload needs it

        for changes in watch(*self.folders, watch_filter=PythonFilter(), stop_event=self._stop):
            self._changes.put({Path(path) for _, path in changes})

    def changed(self) -> str | None:
        """What changed since the last call (`workers/handlers/x.py`, relative to here if it can), or None."""
        reported: set[Path] = set()
        while not self._changes.empty():
            reported |= self._changes.get()
        paths = {path for path in reported if self._content_changed(path)}
        if not paths:
            return None
        here = Path.cwd()
        shown = sorted(str(p.relative_to(here)) if p.is_relative_to(here) else str(p) for p in paths)
        return ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")

    def _content_changed(self, path: Path) -> bool:
        try:
            digest: bytes | None = hashlib.sha256(path.read_bytes()).digest()
        except OSError:  # removed (or unreadable): a change the worker must see too
            digest = None
        changed = path not in self._seen or self._seen[path] != digest
        self._seen[path] = digest
        return changed

    def refresh(self) -> None:
        """A worker starts now, on the files as they are: that is what later reports are compared with."""
        for path in list(self._seen):
            self._content_changed(path)

    def stop(self) -> None:
        """Stop watching (the thread ends within a step of watchfiles, 50 ms)."""
        self._stop.set()
        self._thread.join(timeout=2)
