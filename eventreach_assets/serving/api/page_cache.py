"""Answers already given, given again while the stores say nothing they hold has changed.

Pure. A page is a function of its query, what the stores hold and the time (an item stops being
live at its `expires_at`). A local SQLite store tells cheaply whether anything was committed since
(`PRAGMA data_version`: by any connection or process) and when its next live item expires (the
`expires_at` values it wrote, kept apart). While neither happened, reading the page again would
give the same bytes, so each worker keeps the answers it gave (least recently used first out,
bounded in bytes) under the stores' versions, and drops them all once a version moves or that
expiry passes. Never stale:
a registration, a cancellation, the weekly rewrite or a ledger write committed anywhere empties
the cache before the next page is answered. The stores are still paged by their indexes; the
cache only spares reading the same page twice in between writes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable


class PageCache:
    """Page bodies by request, valid for one set of store versions and until one moment."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self._bodies: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._versions: Hashable | None = None
        self._valid_until: float = float("-inf")  # epoch seconds: the next expiry of a live item

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._bodies)

    def renew(self, versions: Hashable, now_epoch: int, next_expiry: Callable[[], int | None]) -> None:
        """Keep the answers only if the stores are at `versions` still and nothing expired by
        `now_epoch`; else drop them all and start over at `versions`, valid until `next_expiry()`
        (None: nothing live expires)."""
        if versions == self._versions and now_epoch < self._valid_until:
            return
        self._bodies.clear()
        self._bytes = 0
        self._versions = versions
        expiry = next_expiry()
        self._valid_until = float("inf") if expiry is None else expiry

    def get(self, key: Hashable) -> bytes | None:
        body = self._bodies.get(key)
        if body is not None:
            self._bodies.move_to_end(key)
        return body

    def put(self, key: Hashable, versions: Hashable, body: bytes) -> None:
        """Keep `body`, read when the stores were at `versions`, unless they have moved on since
        (another request renewed the cache meanwhile) or it alone would fill half the cache."""
        if versions != self._versions or len(body) > self.max_bytes // 2 or key in self._bodies:
            return
        self._bodies[key] = body
        self._bytes += len(body)
        while self._bytes > self.max_bytes:
            _, dropped = self._bodies.popitem(last=False)
            self._bytes -= len(dropped)
