"""The per-process cache of whole registration lists (see `ExpiringCache`)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

DEFAULT_CACHE_SECONDS = 5.0

T = TypeVar("T")


@dataclass
class ExpiringCache:
    """Per-process cache of whole registered / waitlisted lists, refreshed after `seconds` (0: off).

    A registered list is read whole from the store (it has no paged query; ~20 ms per 1,000
    registrants locally), so pages of one list share one read. An expired list is still
    served while one background load replaces it (a refresh never makes a request wait); a list
    never loaded, or dropped by `clear`, is loaded before answering. The webhook clears the
    cache of the process that ingested; other processes serve new registrations after at most
    `seconds` plus one load. At most `max_entries` lists are kept.
    """

    seconds: float
    max_entries: int = 256
    _entries: OrderedDict[tuple[str, ...], tuple[float, Any]] = field(default_factory=OrderedDict)
    _refreshing: set[tuple[str, ...]] = field(default_factory=set)
    _locks: dict[tuple[str, ...], threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _generation: int = 0  # bumped by `clear`: a load begun before it does not store its (older) value

    def lookup(self, key: tuple[str, ...]) -> tuple[Any | None, bool]:
        """(the cached value or None, whether the caller should start its refresh); never blocks.

        Only the first caller after expiry is asked to refresh, so one load runs per key.
        """
        with self._guard:
            entry = self._entries.get(key)
            if entry is None or self.seconds <= 0:
                return None, False
            if entry[0] > time.monotonic() or key in self._refreshing:
                return entry[1], False
            self._refreshing.add(key)
            return entry[1], True

    def load(self, key: tuple[str, ...], loader: Callable[[], T]) -> T:
        """`loader()`'s value, stored under `key` (blocks: run it in a thread). Concurrent loads of
        a key wait for the first one and take its value."""
        if self.seconds <= 0:
            return loader()
        started = time.monotonic()
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
            generation = self._generation
        try:
            with lock:
                with self._guard:
                    entry = self._entries.get(key)
                if entry is not None and entry[0] - self.seconds >= started:  # loaded while we waited
                    return entry[1]
                value = loader()
                with self._guard:
                    if generation != self._generation:
                        return value
                    self._entries[key] = (time.monotonic() + self.seconds, value)
                    self._entries.move_to_end(key)
                    while len(self._entries) > self.max_entries:
                        evicted, _ = self._entries.popitem(last=False)
                        self._locks.pop(evicted, None)
                return value
        finally:
            with self._guard:
                self._refreshing.discard(key)

    def clear(self) -> None:
        """Forget every list (after new registrations), including loads still running."""
        with self._guard:
            self._entries.clear()
            self._generation += 1
