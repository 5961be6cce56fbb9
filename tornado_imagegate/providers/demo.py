"""The built-in offline demo provider: abstract PNGs rendered locally, no network, no keys."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tornado_imagegate.demo_render import render_png
from tornado_imagegate.openai_api import ImageRequest
from tornado_imagegate.providers import ProviderImage


class DemoProvider:
    """Renders a deterministic picture of the prompt and seed; a demo, not a model."""

    async def generate(
        self,
        request: ImageRequest,
        prompt: str,
        on_progress: Callable[[str], None] | None = None,
        deadline: float | None = None,
    ) -> list[ProviderImage]:
        """Render ``request.n`` images (seeds ``seed``, ``seed + 1``, ...) off the event loop
        (no upstream: ``deadline`` does not apply)."""
        loop = asyncio.get_running_loop()
        images = []
        for index in range(request.n):
            data = await loop.run_in_executor(
                None, render_png, prompt, request.seed + index, request.width, request.height
            )
            images.append(ProviderImage(data=data, content_type="image/png"))
        return images
