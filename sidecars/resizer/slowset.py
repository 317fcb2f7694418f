"""The slow set: keys whose last attempt was infeasible, retried only after `--retry-interval-max`.

csi-lib-utils `slowset.SlowSet`: `add` records when a key failed (a key already present keeps its
first time), `contains` is true until `retry_time` has passed since then (an expired key is dropped),
and `time_remaining` is how long until the key may be tried again. Time is the event loop's clock
(or any injected `now`), so tests can run it in virtual time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


class SlowSet:
    """Keys to retry slowly; see the module docstring."""

    def __init__(self, retry_time: float, *, now: Callable[[], float] = _loop_time) -> None:
        self.retry_time = retry_time
        self._now = now
        self._added: dict[str, float] = {}

    def add(self, key: str) -> bool:
        """Record a failure of `key` now; False when it was already in the set."""
        if self.contains(key):
            return False
        self._added[key] = self._now()
        return True

    def contains(self, key: str) -> bool:
        added = self._added.get(key)
        if added is None:
            return False
        if self._now() - added >= self.retry_time:
            del self._added[key]
            return False
        return True

    def remove(self, key: str) -> None:
        self._added.pop(key, None)

    def time_remaining(self, key: str) -> float:
        """Seconds until `key` leaves the set (0 when it is not in it)."""
        added = self._added.get(key)
        if added is None:
            return 0.0
        return max(0.0, added + self.retry_time - self._now())
