"""Cross-request micro-batching: concurrent calls with the same options share one search.

Thirty-two clients asking Nearest for one token each would otherwise make thirty-two FAISS
calls: thirty-two passes over E for exact search (memory-bound matrix-vector products instead
of one matrix-matrix product), thirty-two OpenMP fork/joins for HNSW. Here each handler thread
hands its decoded queries to a Batcher and waits; queries with the same key (model, options)
are run as one domain call and the results are split back.

There is no batching thread and no timer. The first caller to find no batch running for its key
becomes the leader: it runs everything queued for that key (up to `max_queries`), hands the
results out, and passes leadership to the oldest caller still waiting. Callers that arrive while
a batch runs queue up and go together in the next one, so an idle server adds no delay and a
busy one batches by itself ("natural" batching). `max_wait` > 0 makes a leader wait that long
for company first, trading latency for larger batches.

A caller whose client has gone away (see cancellation.py) is dropped before its batch runs.
If a merged call fails with a domain error, every request of the batch is run on its own, so
each gets its own answer or its own error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from .cancellation import Liveness, bound, current
from .errors import Cancelled, EmbedlensError

Item = TypeVar("Item")
Result = TypeVar("Result")

RunBatch = Callable[[Hashable, list[Item]], Sequence[Result]]
Observe = Callable[[float], None]


class _Waiter(Generic[Item, Result]):
    __slots__ = ("done", "error", "item", "lead", "live", "result", "size", "t0")

    def __init__(self, item: Item, size: int, live: Liveness) -> None:
        self.item = item
        self.size = size
        self.live = live
        self.t0 = time.perf_counter()
        self.done = threading.Event()
        self.lead = False
        self.result: Result | None = None
        self.error: BaseException | None = None


class Batcher(Generic[Item, Result]):
    """Runs `run(key, items)` once for many concurrent `submit(key, item)` calls."""

    def __init__(
        self,
        run: RunBatch[Item, Result],
        *,
        max_queries: int = 4096,
        max_wait: float = 0.0,
        on_wait: Observe | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self._run = run
        self.max_queries = max_queries
        self.max_wait = max_wait
        self._on_wait = on_wait
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._queues: dict[Hashable, list[_Waiter[Item, Result]]] = {}
        self._busy: set[Hashable] = set()

    def submit(self, key: Hashable, item: Item, size: int = 1) -> Result:
        """The result for `item` (`size` queries), computed together with others of `key`."""
        w: _Waiter[Item, Result] = _Waiter(item, size, current())
        with self._lock:
            self._queues.setdefault(key, []).append(w)
            lead = key not in self._busy
            if lead:
                self._busy.add(key)
        if not lead:
            w.done.wait()
            if not w.lead:
                return self._outcome(w)
        self._lead(key)
        return self._outcome(w)

    @staticmethod
    def _outcome(w: _Waiter[Item, Result]) -> Result:
        if w.error is not None:
            raise w.error
        return w.result  # type: ignore[return-value]

    def _lead(self, key: Hashable) -> None:
        """Run one batch from the front of the queue (which holds our own item), then hand over."""
        if self.max_wait > 0:
            deadline = time.perf_counter() + self.max_wait
            while time.perf_counter() < deadline:
                with self._lock:
                    if sum(x.size for x in self._queues[key]) >= self.max_queries:
                        break
                time.sleep(min(0.0005, self.max_wait))
        with self._lock:
            queue = self._queues[key]
            n, total = 0, 0
            while n < len(queue) and (n == 0 or total + queue[n].size <= self.max_queries):
                total += queue[n].size
                n += 1
            batch = queue[:n]
            del queue[:n]
        try:
            self._execute(key, batch)
        finally:
            with self._lock:
                queue = self._queues[key]
                if queue:
                    queue[0].lead = True  # the oldest waiter runs the next batch
                    queue[0].done.set()
                else:
                    self._busy.discard(key)
                    del self._queues[key]
            for w in batch:
                w.done.set()

    def _execute(self, key: Hashable, batch: list[_Waiter[Item, Result]]) -> None:
        start = time.perf_counter()
        live = []
        for w in batch:
            if self._on_wait is not None:
                self._on_wait(start - w.t0)
            if w.live():
                live.append(w)
            else:
                w.error = Cancelled("the call was cancelled or its deadline passed before it ran")
        if not live:
            return
        if self._on_batch is not None:
            self._on_batch(sum(w.size for w in live), len(live))
        try:
            # The merged call stops early only if every caller in it has gone away.
            with bound(lambda: any(w.live() for w in live)):
                results = self._run(key, [w.item for w in live])
        except EmbedlensError:
            for w in live:  # someone's input failed the merged call: answer each on its own
                with bound(w.live):
                    raise_into(w, lambda w=w: self._run(key, [w.item])[0])  # type: ignore[misc]
            return
        except BaseException as exc:
            for w in live:
                w.error = exc
            return
        for w, r in zip(live, results):
            w.result = r


def raise_into(w: _Waiter[Item, Result], fn: Callable[[], Result]) -> None:
    """Store fn()'s result, or the exception it raises, in the waiter."""
    try:
        w.result = fn()
    except BaseException as exc:
        w.error = exc
