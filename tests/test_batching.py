"""Batcher: concurrent submissions with the same key run as one call; errors stay per request."""

from __future__ import annotations

import threading
import time

import pytest

from embedlens.batching import Batcher, _Waiter
from embedlens.cancellation import bound
from embedlens.errors import Cancelled, InvalidArgument


def test_concurrent_calls_are_merged_and_answered_in_order() -> None:
    calls: list[list[int]] = []
    gate = threading.Event()

    def run(key, items):
        if not calls:
            gate.wait(5)  # hold the first batch so the others queue up behind it
        calls.append(list(items))
        return [key * 1000 + i for i in items]

    b: Batcher[int, int] = Batcher(run)
    results: dict[int, int] = {}

    def submit(i: int) -> None:
        results[i] = b.submit(7, i)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(12)]
    threads[0].start()
    time.sleep(0.1)
    for t in threads[1:]:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(5)
    assert results == {i: 7000 + i for i in range(12)}
    assert len(calls) == 2 and calls[0] == [0] and sorted(calls[1]) == list(range(1, 12))


def test_different_keys_never_share_a_batch() -> None:
    seen: list[tuple[str, list[int]]] = []
    b: Batcher[int, int] = Batcher(lambda k, items: seen.append((k, list(items))) or list(items))
    threads = [threading.Thread(target=b.submit, args=(k, i)) for i, k in enumerate("abab")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert all(len({k}) == 1 for k, _ in seen)
    assert sorted(i for _, items in seen for i in items) == [0, 1, 2, 3]


def test_a_bad_request_fails_alone() -> None:
    def run(key, items):
        if any(i < 0 for i in items):
            raise InvalidArgument(f"negative item among {items}")
        return [i * 2 for i in items]

    b: Batcher[int, int] = Batcher(run)
    # One merged batch [-1, 3] fails; each item is then run on its own.
    waiters = [_Waiter(-1, 1, lambda: True), _Waiter(3, 1, lambda: True)]
    b._execute("k", waiters)
    assert isinstance(waiters[0].error, InvalidArgument) and waiters[1].result == 6
    assert b.submit("k", 5) == 10
    with pytest.raises(InvalidArgument):
        b.submit("k", -2)


def test_a_caller_that_has_gone_is_dropped() -> None:
    ran: list[list[int]] = []
    b: Batcher[int, int] = Batcher(lambda k, items: ran.append(list(items)) or list(items))
    with bound(lambda: False), pytest.raises(Cancelled):
        b.submit("k", 1)
    assert ran == []
    assert b.submit("k", 2) == 2
