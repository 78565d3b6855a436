"""The lifetime of a MediaPipe Tasks object held by a component (filter, masker, pose estimator).

Tasks objects hold native resources and must be closed, or they error at interpreter exit.
:class:`TasksComponent` creates its task lazily on first use (``_create()``), serialises calls
to it (``run(fn)`` under a lock: one Tasks object is not thread-safe) and closes it in
``close()``, on leaving a ``with`` block and when garbage-collected.
"""
from __future__ import annotations

import threading
from typing import Any, Callable


class TasksComponent:
    """Mixin for components that wrap one MediaPipe Tasks object; subclasses define ``_create()``."""

    _task: Any = None

    def _create(self) -> Any:  # pragma: no cover - interface
        """Return a new Tasks object (detector, segmenter, ...)."""
        raise NotImplementedError

    @property
    def task(self) -> Any:
        """The Tasks object, created on first use."""
        if self._task is None:
            self._task = self._create()
        return self._task

    def run(self, fn: Callable[[Any], Any]) -> Any:
        """Return ``fn(task)``, called under this component's lock."""
        lock = self.__dict__.setdefault("_task_lock", threading.Lock())
        with lock:
            return fn(self.task)

    def close(self) -> None:
        """Release the Tasks object (safe to call more than once)."""
        task, self._task = self._task, None
        if task is not None:
            try:
                task.close()
            except Exception:  # closing during interpreter shutdown may fail; nothing to do
                pass

    def __enter__(self):
        _ = self.task
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
