"""A bounded pool of per-sender connections: what lets 32 threads send over SMTP or HTTP at once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

Slot = TypeVar("Slot")


class SlotPool(Generic[Slot]):
    """At most `size` slots (each holding, say, one connection), each used by one thread at a time.

    `with pool.slot() as slot:` takes the slot returned last (a warm connection is reused before
    a cold one is opened), creates one while fewer than `size` exist, else waits for one to come
    back. `close_all()` closes the idle slots now and each busy one when its thread gives it back,
    so after it, and once the sends in flight have finished, no connection is left open.
    """

    def __init__(self, size: int, create: Callable[[], Slot], close: Callable[[Slot], None]) -> None:
        if size < 1:
            raise ValueError(f"pool size must be >= 1, not {size}")
        self._size = size
        self._create = create
        self._close = close
        self._available = threading.Condition()
        self._idle: list[Slot] = []
        self._created = 0
        self._generation = 0
        self._taken_in: dict[int, int] = {}  # id(slot) -> generation it was taken in

    @contextmanager
    def slot(self) -> Iterator[Slot]:
        taken = self._take()
        try:
            yield taken
        finally:
            self._give_back(taken)

    def close_all(self) -> None:
        """Close every idle slot now, and each busy one when it comes back."""
        with self._available:
            self._generation += 1
            idle, self._idle = self._idle, []
        for slot in idle:
            self._close(slot)
        with self._available:
            self._idle.extend(idle)  # closed, still reusable: the next send reconnects
            self._available.notify_all()

    def _take(self) -> Slot:
        with self._available:
            while not self._idle and self._created >= self._size:
                self._available.wait()
            if self._idle:
                taken = self._idle.pop()
            else:
                self._created += 1
                taken = self._create()
            self._taken_in[id(taken)] = self._generation
            return taken

    def _give_back(self, slot: Slot) -> None:
        with self._available:
            stale = self._taken_in.pop(id(slot), self._generation) != self._generation
        if stale:  # taken before close_all(): close it now that its send is over
            self._close(slot)
        with self._available:
            self._idle.append(slot)
            self._available.notify()
