"""A test's fakes started together on one image host, and closed together."""

from __future__ import annotations

import inspect
from typing import Any

from .origin import FakeOrigin


class FakeSet:
    """An image host (``images``) and the named fakes, e.g. ``FakeSet(sd=FakeSD, llm=FakeLLM)``.

    Each fake is an attribute; a fake that keeps images (it takes an ``image_host``) keeps
    them on the set's image host.
    """

    def __init__(self, **kinds: type) -> None:
        self.images = FakeOrigin()
        self._started: list[Any] = []
        for name, kind in kinds.items():
            takes_host = "image_host" in inspect.signature(kind).parameters
            fake = kind(image_host=self.images) if takes_host else kind()
            setattr(self, name, fake)
            self._started.append(fake)

    def __getattr__(self, name: str) -> Any:  # only reached for names never set: say so
        raise AttributeError(f"this test's FakeSet has no fake named {name!r}")

    def close(self) -> None:
        """Stop every fake, then the image host."""
        for fake in self._started:
            fake.close()
        self.images.close()
