"""The server's life: requests in flight, and whether it is shutting down."""

from __future__ import annotations

import asyncio


class Lifecycle:
    """Counts requests in flight so that a shutdown can let them finish."""

    def __init__(self) -> None:
        self.inflight = 0
        self.shutting_down = False
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        """A request started."""
        self.inflight += 1
        self._idle.clear()

    def end(self) -> None:
        """A request finished (or its client left)."""
        self.inflight = max(0, self.inflight - 1)
        if self.inflight == 0:
            self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for every request in flight; True if they all finished."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True
