"""A fake Gemini API: ``POST /v1beta/models/{model}:generateContent`` answering inline images.

Shapes as Google documents them (camelCase proto JSON): the key in ``x-goog-api-key``, answers
``candidates[].content.parts[]`` with ``text`` and ``inlineData`` parts, refusals as a 200 with a
``promptFeedback.blockReason`` or a safety ``finishReason``, errors as
``{"error": {"code", "message", "status", "details"}}``. A request with
``generationConfig.thinkingConfig.includeThoughts`` gets the thoughts too, as the Gemini 3 image
models give them: ``"thought": true`` parts, text and an interim image, before the answer.
"""

from __future__ import annotations

import re
from typing import Any

from tornado.web import RequestHandler

from .images import b64_png, png_bytes
from .origin import FakeOrigin
from .providers import Answer, FakeUpstream, Recorded

_GENERATE = re.compile(r"^/v1beta/models/(?P<model>[^/:]+):generateContent$")


def google_error(status: int, message: str, state: str, reason: str | None = None) -> Any:
    """Google's error body (``details`` with an ErrorInfo ``reason`` when one is given)."""
    error: dict[str, Any] = {"code": status, "message": message, "status": state}
    if reason is not None:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
            }
        ]
    return {"error": error}


def usage_metadata(prompt_tokens: int = 12, image_tokens: int = 1290) -> dict[str, int]:
    """The ``usageMetadata`` of an answer."""
    return {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": image_tokens,
        "totalTokenCount": prompt_tokens + image_tokens,
    }


def inline_part(image: bytes, mime_type: str = "image/png", snake_case: bool = False) -> Any:
    """One image part: ``inlineData`` (or the ``inline_data``/``mime_type`` spelling)."""
    if snake_case:
        return {"inline_data": {"mime_type": mime_type, "data": b64_png(image)}}
    return {"inlineData": {"mimeType": mime_type, "data": b64_png(image)}}


def candidates_answer(*parts: Any, finish_reason: str = "STOP", model: str = "fake") -> Any:
    """A ``generateContent`` answer of one candidate with these parts."""
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": list(parts)},
                "finishReason": finish_reason,
                "index": 0,
            }
        ],
        "usageMetadata": usage_metadata(),
        "modelVersion": model,
    }


# The aspect ratios Google documents for its image models; Gemini 3.1 Flash Image adds four.
ASPECT_RATIOS = frozenset({"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"})
FLASH_3_1_RATIOS = ASPECT_RATIOS | {"1:4", "4:1", "1:8", "8:1"}
# imageSize: an uppercase K ("1k" is refused); 512 without one.
IMAGE_SIZES = frozenset({"512", "1K", "2K", "4K"})


def _image_config_refused(model: str, body: Any) -> str | None:
    """Why Gemini refuses a request's ``imageConfig`` (400 INVALID_ARGUMENT), or None."""
    config = body.get("generationConfig") if isinstance(body, dict) else None
    image = config.get("imageConfig") if isinstance(config, dict) else None
    if not isinstance(image, dict):
        return None
    ratios = FLASH_3_1_RATIOS if "3.1-flash" in model else ASPECT_RATIOS
    if "aspectRatio" in image and image["aspectRatio"] not in ratios:
        return f"Unsupported aspect ratio: {image['aspectRatio']}"
    if "imageSize" in image and image["imageSize"] not in IMAGE_SIZES:
        return f"Unsupported image size: {image['imageSize']}"
    return None


def _includes_thoughts(body: Any) -> bool:
    """Whether a request asks for the model's thoughts (``thinkingConfig.includeThoughts``)."""
    config = body.get("generationConfig") if isinstance(body, dict) else None
    thinking = config.get("thinkingConfig") if isinstance(config, dict) else None
    return isinstance(thinking, dict) and thinking.get("includeThoughts") is True


class FakeGemini(FakeUpstream):
    """Gemini ``generateContent`` with image output; keys in ``x-goog-api-key``.

    ``valid_keys``, when set, are the only keys accepted: another is answered 400
    ``API_KEY_INVALID``, as Google does. No key at all is 403.
    """

    image_prefix = "gemini"

    def __init__(self, image_host: FakeOrigin | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(host, image_host)
        self.valid_keys: set[str] | None = None
        self.default = Answer(json=self._success)
        # The images of the default answers (not the interim thought images), in order.
        self.drawn: list[bytes] = []

    def base_url(self) -> str:
        """The base to configure (``IMAGE_GEN_API_BASE_n``): the API adds the model's path."""
        return self.url("v1beta")

    def accepts(self, path: str) -> bool:
        """Only ``/v1beta/models/{model}:generateContent``."""
        return _GENERATE.match(path) is not None

    def error_json(self, status: int, message: str) -> Any:
        """Google's error body."""
        state = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}
        return google_error(status, message, state.get(status, "UNKNOWN"))

    @staticmethod
    def model_of(request: Recorded) -> str:
        """The model named in a request's path."""
        match = _GENERATE.match(request.path)
        return match.group("model") if match else ""

    def _record(self, handler: RequestHandler) -> tuple[Recorded, bool]:
        recorded, valid = super()._record(handler)
        recorded.key = recorded.headers.get("x-goog-api-key")
        return recorded, valid

    def _choose(self, recorded: Recorded, valid: bool) -> Answer:
        if recorded.method == "POST" and self.accepts(recorded.path):
            if recorded.key is None:
                return Answer(
                    403, self.error_json(403, "Method doesn't allow unregistered callers")
                )
            if self.valid_keys is not None and recorded.key not in self.valid_keys:
                return self.invalid_key_answer()
            refused = _image_config_refused(self.model_of(recorded), recorded.json)
            if refused is not None:
                return Answer(400, self.error_json(400, refused))
        return super()._choose(recorded, valid)

    def _success(self, request: Recorded) -> Any:
        image = self.make_png(len(self.requests))
        self.drawn.append(image)
        parts = [{"text": "Here is your image."}, inline_part(image)]
        if _includes_thoughts(request.json):
            draft = self.make_png(100_000 + len(self.requests))
            thoughts = [{"text": "Composing the scene.", "thought": True}]
            thoughts.append({**inline_part(draft), "thought": True})
            parts = thoughts + parts
        return candidates_answer(*parts, model=self.model_of(request))

    @staticmethod
    def images_answer(*images: bytes, snake_case: bool = False) -> Answer:
        """A success holding these images (one fresh PNG when none), after a text part."""
        parts = [inline_part(i, snake_case=snake_case) for i in images or (png_bytes(),)]
        return Answer(json=candidates_answer({"text": "Here you go."}, *parts))

    @staticmethod
    def text_answer(text: str, finish_reason: str = "STOP") -> Answer:
        """An answer with only a text part."""
        return Answer(json=candidates_answer({"text": text}, finish_reason=finish_reason))

    @staticmethod
    def safety_answer(finish_reason: str = "IMAGE_SAFETY") -> Answer:
        """A 200 whose one candidate stopped for safety, with no image."""
        return Answer(
            json={
                "candidates": [
                    {"content": {"role": "model"}, "finishReason": finish_reason, "index": 0}
                ],
                "usageMetadata": usage_metadata(image_tokens=0),
            }
        )

    @staticmethod
    def blocked_prompt_answer(reason: str = "PROHIBITED_CONTENT") -> Answer:
        """A 200 with no candidate: the prompt was blocked."""
        return Answer(
            json={
                "promptFeedback": {"blockReason": reason},
                "usageMetadata": usage_metadata(image_tokens=0),
            }
        )

    @staticmethod
    def rate_limited_answer(retry_after: str = "7") -> Answer:
        """429 ``RESOURCE_EXHAUSTED`` with ``Retry-After``."""
        body = google_error(
            429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED"
        )
        return Answer(429, body, headers={"Retry-After": retry_after})

    @staticmethod
    def invalid_key_answer() -> Answer:
        """400 ``INVALID_ARGUMENT``, reason ``API_KEY_INVALID``: how Google answers a bad key."""
        message = "API key not valid. Please pass a valid API key."
        return Answer(400, google_error(400, message, "INVALID_ARGUMENT", "API_KEY_INVALID"))
