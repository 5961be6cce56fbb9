"""Google Gemini ``generateContent`` with image output (kind ``gemini``): inline base64 images.

The key travels in the ``x-goog-api-key`` header, never in the query string, where it would reach
access logs. A refusal comes back as a 200 without an image (a blocked prompt, or a safety finish
reason) and is reported as such, not as a broken answer.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
from typing import Any
from urllib.parse import quote

from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate import jsontext
from tornado_imagegate.providers import (
    ProviderAnswerError,
    ProviderCall,
    ProviderImage,
    ProviderRejected,
    decode_base64_image,
    json_object_answer,
)
from tornado_imagegate.sizing import RATIOS_GEMINI, ratio_text

logger = logging.getLogger(__name__)

# Finish reasons that mean "will not draw this": the request is refused, not the key.
REFUSALS = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
SAID_CHARS = 120
_RATIO_OF_SIZE = {size: ratio for ratio, size in RATIOS_GEMINI.items()}
_RATIOS = tuple(tuple(int(side) for side in ratio.split(":")) for ratio in RATIOS_GEMINI)
# generationConfig.seed is an int32.
_SEED_RANGE = 2**31


def endpoint_for(endpoint: str, model: str) -> str:
    """The ``generateContent`` URL of ``model`` below a base URL.

    An endpoint written out in full (ending ``:generateContent``) is called as given; one with a
    ``{model}`` placeholder gets the model there.
    """
    model = model.removeprefix("models/")
    if "{model}" in endpoint:
        return endpoint.replace("{model}", quote(model, safe=""))
    if endpoint.rstrip("/").endswith(":generateContent"):
        return endpoint
    return f"{endpoint.rstrip('/')}/models/{quote(model, safe='')}:generateContent"


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, objects merged key by key (so an extra
    ``generationConfig.imageConfig.imageSize`` keeps the aspect ratio)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


class GeminiApi:
    """``POST {contents, generationConfig}`` -> ``candidates[].content.parts[].inlineData``."""

    def fit_size(self, model: str, width: int, height: int) -> tuple[int, int]:
        """The size of the supported aspect ratio nearest the one asked for (by the ratio's
        name: Google's sizes for a ratio are only close to it, 1184x864 for 4:3)."""
        if (width, height) in _RATIO_OF_SIZE:
            return width, height
        wanted = math.log(width / height)
        ratio = min(_RATIOS, key=lambda r: abs(math.log(r[0] / r[1]) - wanted))
        return RATIOS_GEMINI[f"{ratio[0]}:{ratio[1]}"]

    def images_per_call(self, model: str) -> int:
        """One image a request: the image models make one per answer."""
        return 1

    def build(self, call: ProviderCall) -> HTTPRequest:
        """The prompt (and any input images) as one user turn, text and image output, the
        aspect ratio in imageConfig."""
        aspect_ratio = _RATIO_OF_SIZE.get(call.size) or ratio_text(*call.size)
        generation_config: dict[str, Any] = {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": {"aspectRatio": aspect_ratio},
        }
        if call.request.seed_given:
            generation_config["seed"] = call.seed % _SEED_RANGE
        parts: list[dict[str, Any]] = [{"text": call.prompt}]
        # Images to edit go as inlineData parts after the prompt.
        parts += [
            {
                "inlineData": {
                    "mimeType": image.content_type,
                    "data": base64.b64encode(image.data).decode("ascii"),
                }
            }
            for image in call.inputs
        ]
        body = {
            "contents": [{"role": "user", "parts": parts}],
            "generationConfig": generation_config,
        }
        if call.extra:
            body = _merged(body, call.extra)
        return HTTPRequest(
            endpoint_for(call.endpoint, call.model),
            method="POST",
            headers={
                "x-goog-api-key": call.key,
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            body=jsontext.dumps(body),
            follow_redirects=False,
        )

    def key_refused(self, response: HTTPResponse) -> bool:
        """Whether an error answer is about the key: Gemini answers a bad key with 400."""
        try:
            answer = json.loads(response.body or b"")
        except (ValueError, UnicodeDecodeError):
            return False
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict):
            return False
        details = error.get("details")
        for detail in details if isinstance(details, list) else []:
            if isinstance(detail, dict) and detail.get("reason") == "API_KEY_INVALID":
                return True
        message = error.get("message")
        return isinstance(message, str) and "api key not valid" in message.lower()

    def parse(self, response: HTTPResponse) -> list[ProviderImage]:
        """Every inline image of every candidate, thoughts left out; a block or safety finish
        is a refusal."""
        answer = json_object_answer(response)
        feedback = answer.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            reason = str(feedback["blockReason"])
            message = feedback.get("blockReasonMessage")
            detail = f": {message}" if isinstance(message, str) and message.strip() else ""
            raise ProviderRejected(f"the prompt was blocked ({reason}){detail}"[:200])
        images: list[ProviderImage] = []
        texts: list[str] = []
        finish_reasons: list[str] = []
        candidates = answer.get("candidates")
        for candidate in candidates if isinstance(candidates, list) else []:
            if not isinstance(candidate, dict):
                continue
            if isinstance(candidate.get("finishReason"), str):
                finish_reasons.append(candidate["finishReason"])
            content = candidate.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            for part in parts if isinstance(parts, list) else []:
                # A thought (asked for with includeThoughts) is not the answer, even an image:
                # the Gemini 3 image models draw interim images while thinking.
                if not isinstance(part, dict) or part.get("thought"):
                    continue
                image = _inline_image(part)
                if image is not None:
                    images.append(image)
                elif isinstance(part.get("text"), str):
                    texts.append(part["text"])
        if images:
            usage = _usage(answer.get("usageMetadata"))
            if usage:
                images[0] = dataclasses.replace(images[0], usage=usage)
            return images
        said = " ".join(" ".join(texts).split())
        said = f"; the model said: {said[:SAID_CHARS]}" if said else ""
        refused = [reason for reason in finish_reasons if reason in REFUSALS]
        if refused:
            raise ProviderRejected(f"finish reason {refused[0]}{said}")
        finish = f" (finish reason {finish_reasons[0]})" if finish_reasons else ""
        raise ProviderAnswerError(f"the answer holds no image{finish}{said}")


def _inline_image(part: dict[str, Any]) -> ProviderImage | None:
    """The image of an ``inlineData`` (or ``inline_data``) part, or None for another part."""
    inline = part.get("inlineData")
    if not isinstance(inline, dict):
        inline = part.get("inline_data")
    if not isinstance(inline, dict) or not isinstance(inline.get("data"), str):
        return None
    mime_type = inline.get("mimeType") or inline.get("mime_type") or "image/png"
    if not str(mime_type).startswith("image/"):
        return None
    return ProviderImage(data=decode_base64_image(inline["data"]), content_type=str(mime_type))


def _usage(metadata: Any) -> dict[str, int] | None:
    """``usageMetadata`` as the Images API's ``usage``: input, output and total tokens."""
    if not isinstance(metadata, dict):
        return None
    counts = {
        "input_tokens": metadata.get("promptTokenCount"),
        "output_tokens": metadata.get("candidatesTokenCount"),
        "total_tokens": metadata.get("totalTokenCount"),
    }
    usage = {
        name: count
        for name, count in counts.items()
        if isinstance(count, int) and not isinstance(count, bool)
    }
    return usage or None
