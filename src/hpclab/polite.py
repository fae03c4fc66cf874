"""How often hpclab asks the scheduler. A status query costs the scheduler's controller (and an
SSH command on the login node), and many labs ask at once, so hpclab asks politely:

- while a job is pending, after a wait that doubles from 0.5 s, every 15 s: at most 6 queries a
  minute after the first minute (4, in fact);
- while a job runs (Jupyter starting, the foreground watch), at most 2 in any minute; between
  them the session's end marker on the cluster (a file, no scheduler involved) says whether
  Jupyter has exited.

Both take an injected clock, so that tests count the queries of an hour in a millisecond.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator

PENDING_CAP = 15.0  # seconds between status queries of a pending job, once the doubling reaches it
RUNNING_PER_MINUTE = 2


def pending_windows() -> Iterator[float]:
    """How long each wait for a pending job to start lasts (on the cluster, watching the session's
    files); one status query ends each wait."""
    window = 0.5
    while True:
        yield min(window, PENDING_CAP)
        window *= 2


class Budget:
    """At most `per_minute` queries in any 60 s of `clock`. `allows()` says whether one may be
    made now; `spend()` records one that was made (a query that never reached the cluster,
    because the login node did not answer, is not spent)."""

    def __init__(self, per_minute: int = RUNNING_PER_MINUTE, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.spent = 0
        self._times: deque[float] = deque()

    def allows(self) -> bool:
        now = self.clock()
        while self._times and now - self._times[0] >= 60:
            self._times.popleft()
        return len(self._times) < self.per_minute

    def spend(self) -> None:
        self._times.append(self.clock())
        self.spent += 1
