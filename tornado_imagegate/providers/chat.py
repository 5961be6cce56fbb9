"""Direct groups (``IMAGE_GEN_*_n``, kind ``chat``): a chat-completions endpoint that makes images.

Such endpoints answer in many shapes; every one seen in the wild is understood here: markdown
images or bare URLs in the message, ``data:`` URIs, ``message.images`` (OpenRouter, Gemini), an
OpenAI Images ``data`` list, SiliconFlow's ``images`` list, or the raw image bytes themselves.
"""

from __future__ import annotations

import re
from typing import Any

from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate.images import imagetype
from tornado_imagegate.providers import (
    ProviderAnswerError,
    ProviderCall,
    ProviderImage,
    data_uri,
    decode_base64_image,
    images_from_data_list,
    json_answer,
    json_request,
    with_extra,
)
from tornado_imagegate.sizing import ratio_text

_MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_DATA_URI = re.compile(r"data:image/[a-z0-9.+-]+;base64,[A-Za-z0-9+/=]+", re.IGNORECASE)
_BARE_URL = re.compile(r"https?://[^\s<>\"')\]]+", re.IGNORECASE)


class ChatImagesApi:
    """``POST {model, messages: [user prompt (and images)], stream: false}`` -> an image."""

    def fit_size(self, model: str, width: int, height: int) -> tuple[int, int]:
        """The size is not sent (nor was it by the Flux gateway): its ratio goes into the prompt."""
        return width, height

    def images_per_call(self, model: str) -> int:
        """One image a request."""
        return 1

    def build(self, call: ProviderCall) -> HTTPRequest:
        """One user message; a non-square size is said in words: a chat model hears no other."""
        text = call.prompt
        if call.size[0] != call.size[1]:
            text = f"{call.prompt}, aspect ratio {ratio_text(*call.size)}"
        content: str | list[dict[str, Any]] = text
        if call.inputs:
            # Images to edit: image_url parts after the text, as OpenAI-style chat APIs take them.
            content = [{"type": "text", "text": text}] + [
                {"type": "image_url", "image_url": {"url": data_uri(image)}}
                for image in call.inputs
            ]
        body = {
            "model": call.model,
            "messages": [{"role": "user", "content": content}],
            "stream": False,
        }
        return json_request(call.endpoint, call.key, with_extra(body, call.extra))

    def parse(self, response: HTTPResponse) -> list[ProviderImage]:
        """Find the images, whatever the shape of the answer."""
        body = response.body or b""
        if imagetype.sniff(body[: imagetype.SNIFF_BYTES]):
            return [ProviderImage(data=body)]
        answer = json_answer(response)
        images = _images_in_json(answer)
        if not images:
            raise ProviderAnswerError("the answer holds no image")
        return images


def _images_in_json(answer: Any) -> list[ProviderImage]:
    if not isinstance(answer, dict):
        return []
    images = images_from_data_list(answer.get("data")) or images_from_data_list(
        answer.get("images")
    )
    if images:
        return images
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return []
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return []
    for part in message.get("images") or []:
        url = part.get("image_url", {}).get("url") if isinstance(part, dict) else None
        if isinstance(url, str):
            images.extend(_images_in_text(url))
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "image_url" and isinstance(part.get("image_url"), dict):
                images.extend(_images_in_text(str(part["image_url"].get("url", ""))))
            elif isinstance(part.get("text"), str):
                images.extend(_images_in_text(part["text"]))
    elif isinstance(content, str):
        images.extend(_images_in_text(content))
    return images


def _images_in_text(text: str) -> list[ProviderImage]:
    """Images in message text: data URIs, markdown images, else bare links."""
    images = [ProviderImage(data=decode_base64_image(m.group(0))) for m in _DATA_URI.finditer(text)]
    without_data = _DATA_URI.sub("", text)
    urls = [url for url in _MARKDOWN_IMAGE.findall(without_data) if url.startswith("http")]
    if urls:
        images.extend(ProviderImage(url=url) for url in dict.fromkeys(urls))
    else:
        bare = dict.fromkeys(url.rstrip(".,;") for url in _BARE_URL.findall(without_data))
        images.extend(ProviderImage(url=url, guessed=True) for url in bare)
    return images
