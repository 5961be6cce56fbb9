"""Image providers: one module per provider API; each turns an ImageRequest into images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tornado_imagegate.openai_api import ImageRequest


@dataclass(frozen=True)
class ProviderImage:
    """One image a provider made: its bytes, or a (usually temporary) URL to fetch it from."""

    data: bytes | None = field(default=None, repr=False)
    content_type: str = "image/png"
    url: str | None = None


class Provider(Protocol):
    """What the generation service needs from a provider."""

    async def generate(self, request: ImageRequest) -> list[ProviderImage]:
        """Make ``request.n`` images for ``request``."""
