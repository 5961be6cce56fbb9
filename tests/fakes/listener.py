"""A bare TCP listener on any local address that counts the connections it accepts, reads what
the client sends first, and hangs up: a host that must never be reached."""

from __future__ import annotations

import asyncio

from .loopback import listening_socket


class CountingListener:
    """Counts accepted connections in ``accepted``; ``start()`` it inside the running loop."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.accepted = 0
        self.socket = listening_socket(host)
        self.port: int = self.socket.getsockname()[1]
        self.server: asyncio.Server | None = None
        self._arrival = asyncio.Event()

    async def start(self) -> CountingListener:
        """Start accepting connections."""

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            self._arrival.set()
            try:
                async with asyncio.timeout(5):
                    await reader.read(65536)
            finally:
                writer.close()

        self.server = await asyncio.start_server(accepted, sock=self.socket)
        return self

    async def reachable(self, within: float = 5.0) -> bool:
        """Whether this process can connect here at all (so a refusal is the filter's doing).

        The test's own connection is not counted in ``accepted``.
        """
        before = self.accepted
        self._arrival.clear()
        _reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.close()
        try:
            async with asyncio.timeout(within):
                await self._arrival.wait()
        except TimeoutError:
            return False
        self.accepted = before
        return True

    def url(self, name: str | None = None) -> str:
        """A URL of this listener, by ``name`` or by address."""
        host = name or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{host}:{self.port}/x.png"
