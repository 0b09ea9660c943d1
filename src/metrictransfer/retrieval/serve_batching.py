"""The search service's micro-batcher: concurrent requests' images embedded together by one thread.

One worker thread owns the model and runs every forward pass, because

* a CPU forward pass already uses every core (onnxruntime's and PyTorch's own thread pools): two passes
  at once only fight over the cores, their thread pools oversubscribing them, and both finish later than
  one after the other would;
* images that arrive together go through the model in one pass: on a GPU (the run's PyTorch model,
  ``device="cuda"``) a batch of B costs little more than one image; on a CPU the saving is small (a ResNet-18 on
  2 cores: 19.6 ms an image in a batch of 8 against 20.5 ms alone, benchmarks/results/serve_load.md), and
  what counts there is the first point: one pass at a time, each using every core.

A request's image is decoded and preprocessed in the request's own thread (a bad image fails there, for
that request only), then queued; the worker takes the first queued image and everything queued behind it
(up to ``max_batch``), embeds them in one pass and hands each request its row. While it computes, new
requests queue up, so a loaded service batches by itself. A request announces itself (:meth:`announce`)
when it arrives, before its upload is read and decoded; while some announced request has not queued its
image yet, the worker waits for it, at most ``max_wait_s``. So a lone request never waits, and requests
that arrive together share a batch. The queue is bounded: a service that falls far behind says so
(:class:`BatcherBusyError`) rather than holding ever more images in memory.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")


class BatcherBusyError(RuntimeError):
    """More images wait for the model than the batcher holds: the client should retry later."""


@dataclass
class BatchStats:
    """What the batcher has done: passes run, images embedded, the largest batch, and batch sizes counted."""

    batches: int = 0
    images: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "images": self.images, "largest": self.largest, "sizes": dict(sorted(self.sizes.items()))}


_STOP = object()


class MicroBatcher(Generic[T]):
    """Items embedded in batches by ``forward`` (a list of items → one row each) on one worker thread,
    which starts with the first :meth:`submit` and ends with :meth:`close`."""

    def __init__(
        self, forward: Callable[[list[T]], np.ndarray], max_batch: int = 32, max_wait_s: float = 0.005, max_pending: int = 256
    ) -> None:
        if max_batch < 1 or max_wait_s < 0 or max_pending < 1:
            raise ValueError(f"max_batch {max_batch} and max_pending {max_pending} must be at least 1, max_wait_s {max_wait_s} at least 0")
        self.forward, self.max_batch, self.max_wait_s = forward, max_batch, max_wait_s
        self.stats = BatchStats()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._announced = 0  # requests that will submit an image soon (or withdraw)

    @property
    def alive(self) -> bool:
        """Whether the worker runs, or will start with the next item: false only if it died of a bug."""
        thread = self._thread
        return thread is None or thread.is_alive()

    def announce(self) -> None:
        """A request will submit an image soon: a batch being gathered waits for it (at most max_wait_s).
        Follow with :meth:`submit` (``announced=True``) or :meth:`withdraw`."""
        with self._lock:
            self._announced += 1

    def withdraw(self) -> None:
        """An announced request will not submit (its upload was refused)."""
        with self._lock:
            self._announced = max(0, self._announced - 1)

    def submit(self, item: T, announced: bool = False) -> Future[np.ndarray]:
        """Queue an item; the future holds its row of ``forward``'s output, or the exception it raised."""
        future: Future[np.ndarray] = Future()
        with self._lock:
            if announced:
                self._announced = max(0, self._announced - 1)
            if self._thread is None:  # a worker of its own queue: a closing one may still drain the previous
                self._queue = queue.Queue(maxsize=self._queue.maxsize)
                self._thread = threading.Thread(target=self._run, args=(self._queue,), name="metrictransfer-embed", daemon=True)
                self._thread.start()
            try:
                self._queue.put_nowait((item, future))
            except queue.Full:
                raise BatcherBusyError(f"{self._queue.maxsize} images already wait for the model; retry in a moment") from None
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Embed what is queued, then stop the worker thread (a later :meth:`submit` starts another)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(_STOP)  # blocks while the queue is full: the worker is draining it
        if thread is not None:
            thread.join(timeout)

    def _run(self, jobs: queue.Queue[Any]) -> None:
        while True:
            first = jobs.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            stop = False
            while len(batch) < self.max_batch:
                try:  # what is queued already, then what announced requests queue before the deadline
                    job = jobs.get_nowait()
                except queue.Empty:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._announced == 0:
                        break
                    try:
                        job = jobs.get(timeout=min(left, 0.001))
                    except queue.Empty:
                        continue
                if job is _STOP:
                    stop = True
                    break
                batch.append(job)
            self._embed(batch)
            if stop:
                return

    def _embed(self, batch: list[tuple[T, Future[np.ndarray]]]) -> None:
        live = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            rows = self.forward([item for item, _ in live])
            if len(rows) != len(live):
                raise RuntimeError(f"the model returned {len(rows)} embeddings for {len(live)} images")
        except Exception as err:  # every waiting request learns of it; the worker keeps serving
            for _, future in live:
                future.set_exception(err)
            return
        stats = self.stats
        stats.batches += 1
        stats.images += len(live)
        stats.largest = max(stats.largest, len(live))
        stats.sizes[len(live)] = stats.sizes.get(len(live), 0) + 1
        for row, (_, future) in zip(rows, live):
            future.set_result(row)
