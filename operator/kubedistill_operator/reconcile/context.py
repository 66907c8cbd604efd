"""What every reconcile function gets: the API client, the operator's settings, and where events and status go."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from kubedistill_operator.config import OperatorConfig
from kubedistill_operator.kubeapi import KubeApi, Resource
from kubedistill_operator.status.conditions import StatusUpdate

T = TypeVar("T")
log = logging.getLogger(__name__)

# (object, type Normal|Warning, reason, message)
EventFn = Callable[[dict[str, Any], str, str, str], None]


def _no_events(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
    del obj, type_, reason, message


@dataclass
class Context:
    api: KubeApi
    config: OperatorConfig = field(default_factory=OperatorConfig)
    event: EventFn = _no_events
    # Seconds before a waiting resource is looked at again (also re-triggered by the events it waits on).
    wait_delay: float = 30.0
    # The pool kopf runs synchronous handlers in (None: asyncio's default), for the work async handlers hand off.
    executor: concurrent.futures.Executor | None = None
    # Weak values: a lock lives while handlers use it, so the table does not keep every object ever seen.
    _locks: weakref.WeakValueDictionary[tuple[str, ...], threading.RLock] = field(
        default_factory=weakref.WeakValueDictionary, repr=False)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _background: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)  # kept until done

    def lock(self, *key: str) -> threading.RLock:
        """One lock per object: kopf runs the handlers of different objects at once (a job's own events and its
        RayJob's), and two of them acting on one job would write its status and post its events twice."""
        with self._locks_guard:
            return self._locks.setdefault(key, threading.RLock())

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """From an async handler: `fn(*args)` in the handlers' thread pool, in the handler's context (`kopf.event`
        needs it). Pass copies taken on the event loop: kopf edits its indexes and bodies there meanwhile, and a
        thread iterating a live one fails ("dictionary changed size during iteration").

        Like kopf's own sync handlers, a cancelled handler waits for its thread, so none is left running."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, functools.partial(contextvars.copy_context().run, fn, *args))
        cancelled: asyncio.CancelledError | None = None
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError as error:
                cancelled = error
        if cancelled is not None:
            raise cancelled
        return future.result()


    def in_background(self, fn: Callable[..., Any], *args: Any) -> None:
        """From an async handler: `in_thread(fn, *args)` without waiting for it, so that the handler returns at
        once and kopf goes on with the object's next events. What it raises is logged (an event handler's
        exception is only logged by kopf too); stopping the operator cancels it like a handler."""
        task = asyncio.get_running_loop().create_task(self.in_thread(fn, *args))
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("reconciling in the background failed: %s", error, exc_info=error)


class StatusWriter(Protocol):
    def write(self, update: StatusUpdate) -> None: ...


class ApiStatusWriter:
    """Status written at once, read-modify-write: the update is merged into the freshest status (conditions by
    type) and merge-patched through the status subresource; a no-op writes nothing.

    `body` is the object as just read by the caller (the reconcilers read it once, under the object's lock): the
    first write starts from it instead of reading it again, and each write keeps the server's answer for the
    next, so a reconcile that writes status twice reads the object once. Without `body` the object is read.

    Not kopf's `patch`: kopf applies it after the handler, and `patch.fns` that meet a conflict are carried
    to a later cycle, where conditions computed from an older RayJob would overwrite newer ones. The run's
    name must moreover be in status before its RayJob is created, not after the handler."""

    def __init__(self, api: KubeApi, resource: Resource, namespace: str, name: str,
                 body: dict[str, Any] | None = None) -> None:
        self._api, self._resource, self._namespace, self._name = api, resource, namespace, name
        self.body = body

    def write(self, update: StatusUpdate) -> None:
        if self.body is None:
            self.body = self._api.get(self._resource, self._namespace, self._name)
        if self.body is None:
            return
        status = self.body.get("status") or {}
        if update.is_noop(status):
            return
        written = self._api.patch_status(self._resource, self._namespace, self._name, update.merged_into(status))
        if written is not None:
            self.body = written
