"""Parse OpenAI-shaped requests and build OpenAI-shaped responses (pure functions)."""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from tornado_imagegate import errors, jsontext
from tornado_imagegate.provider_kinds import provider_kind
from tornado_imagegate.sizing import Size, clamp_side, extract_ratio, parse_size, tidy_prompt

MAX_PROMPT_CHARS = 8000
MAX_N = 10
MAX_SEED = 2**63 - 1
ALT_TEXT_CHARS = 80
_NO_ENHANCE = re.compile(r"(?<![\w-])no[-_ ]enhance(?![\w-])", re.IGNORECASE)
# The gpt-image fields a client may send (Images API body, or a chat body's top level), and the
# values OpenAI documents. They reach the openai-images kind as sent; only their form is checked
# here (a short lower-case word), so that a value a compatible service adds is not refused.
IMAGE_OPTIONS: dict[str, tuple[str, ...]] = {
    "quality": ("auto", "low", "medium", "high", "standard", "hd"),
    "background": ("auto", "transparent", "opaque"),
    "output_format": ("png", "jpeg", "webp"),
    "moderation": ("auto", "low"),
}
OPTION_WORD = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class InputImage:
    """An image a client gave to edit or draw from: its bytes and their sniffed raster type."""

    data: bytes = field(repr=False)
    content_type: str


@dataclass(frozen=True)
class ImageRequest:
    """One generation asked for by a client, validated and normalised."""

    model: str
    prompt: str
    width: int
    height: int
    seed: int
    seed_given: bool = False
    cfg: float | None = None
    negative_prompt: str = ""
    n: int = 1
    stream: bool = False
    enhance: bool = True
    # The gpt-image fields the client sent (IMAGE_OPTIONS, output_compression), for the
    # providers that take them.
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    # A follow-up: the prompt was composed from the conversation's last image and this message.
    refined: bool = False
    # The conversation's recent turns, for the optimiser to write the next prompt from.
    conversation: str = field(default="", hash=False)
    # The images to edit (or draw from), in the order given; empty for a text-only request.
    inputs: tuple[InputImage, ...] = field(default=(), hash=False, repr=False)
    # The Images API's edit mask (transparent where to draw), for the providers that take one.
    mask: InputImage | None = field(default=None, hash=False, repr=False)

    @property
    def size(self) -> str:
        """The size as ``"WxH"``."""
        return f"{self.width}x{self.height}"


def decode_json_object(body: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise errors.invalid_json(detail=f"{type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise errors.invalid_json(detail="not an object")
    # JSON may spell lone UTF-16 surrogates ("\ud800"), which no provider can be sent. Only
    # such an escape can make one: bodies without one skip the check.
    if b"\\ud" in body or b"\\uD" in body:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise errors.invalid_json(detail="lone surrogate") from None
    return value


def requested_model(body: dict[str, Any]) -> str:
    """The ``model`` field: 400 when missing or not a non-empty string."""
    model = body.get("model")
    if model is None or model == "":
        raise errors.missing_model()
    if not isinstance(model, str):
        raise errors.invalid_parameter("model", "'model' must be a string.")
    return model.strip()


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat request: its role and its text."""

    role: object
    text: str  # "" when the content has no text, or cannot be read
    unreadable: errors.GatewayError | None = None  # why the content cannot be read
    # The URLs of its image_url parts (data URIs, http(s) links), in order.
    images: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatBody:
    """A chat completions body, read once: its model, and each message's role and text.

    The prompt, the housekeeping check and its answer all read the messages from here.
    """

    fields: dict[str, Any]
    model: str
    # None when 'messages' is not a list; an entry is None when the message is not an object.
    messages: tuple[ChatMessage | None, ...] | None

    def texts(self, role: str) -> list[str]:
        """The texts of the messages of ``role``, in order ("" for one that cannot be read)."""
        return [m.text for m in self.messages or () if m is not None and m.role == role]

    def last_user_text(self) -> str:
        """The text of the last user message, or "" when there is none."""
        users = self.texts("user")
        return users[-1] if users else ""

    def last_user_images(self) -> tuple[str, ...]:
        """The image URLs of the last user message (data URIs or links), in order."""
        for message in reversed(self.messages or ()):
            if message is not None and message.role == "user":
                return message.images
        return ()


def read_chat(body: dict[str, Any]) -> ChatBody:
    """Read a chat completions body (400 when the model is missing).

    Messages are read without complaint: what is wrong with them is kept for ``chat_prompt``,
    as a housekeeping request is answered whatever its other messages hold.
    """
    model = requested_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ChatBody(body, model, None)
    return ChatBody(body, model, tuple(_chat_message(message) for message in messages))


def _chat_message(message: Any) -> ChatMessage | None:
    if not isinstance(message, dict):
        return None
    role = message.get("role")
    try:
        content = message.get("content")
        return ChatMessage(role, message_text(content), images=message_images(content))
    except errors.GatewayError as unreadable:
        return ChatMessage(role, "", unreadable)


def chat_prompt(chat: ChatBody) -> str:
    """The prompt of a chat request: a top-level ``prompt``, else the last user message's text."""
    prompt = chat.fields.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise errors.invalid_parameter("prompt", "'prompt' must be a string.")
    if prompt and prompt.strip():
        return prompt.strip()
    if not chat.messages:
        raise errors.invalid_parameter(
            "messages", "'messages' must be a non-empty list of chat messages."
        )
    for message in reversed(chat.messages):
        if message is None:
            raise errors.invalid_parameter("messages", "Each message must be a JSON object.")
        if message.role != "user":
            continue
        if message.unreadable is not None:
            raise message.unreadable
        if not message.text:
            raise errors.invalid_parameter(
                "messages", "The last user message has no text to make an image from."
            )
        return message.text
    raise errors.invalid_parameter("messages", "There is no user message to make an image from.")


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list joined by spaces."""
    if isinstance(content, str):
        return content.strip()
    if content is None:
        return ""
    if not isinstance(content, list):
        raise errors.invalid_parameter(
            "messages", "Message content must be a string or a list of content parts."
        )
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text":
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
    return " ".join(t.strip() for t in texts if t.strip())


def message_images(content: Any) -> tuple[str, ...]:
    """The URLs of a content list's ``image_url`` parts (``{"url": ...}`` or a bare string)."""
    if not isinstance(content, list):
        return ()
    urls = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "image_url":
            continue
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
        if not isinstance(url, str) or not url.strip():
            raise errors.invalid_parameter(
                "messages", "An image_url part must carry a 'url' string."
            )
        urls.append(url.strip())
    return tuple(urls)


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise errors.invalid_parameter(name, f"'{name}' must be a number.")
    return value


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past the float range: JSON can spell one out
        return False


def _integer(
    body: dict[str, Any], name: str, low: int, high: int, numeric_string: bool = False
) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if numeric_string and isinstance(value, str) and value.strip().isdecimal():
        # "42": some clients send a seed as text (past int()'s digit limit it stays text: a 400)
        with contextlib.suppress(ValueError):
            value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.invalid_parameter(
            name, f"'{name}' must be a whole number from {low} to {high}."
        )
    return value


def _boolean(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise errors.invalid_parameter(name, f"'{name}' must be true or false.")
    return value


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise errors.invalid_parameter(name, f"'{name}' must be a string.")
    return value.strip()


def explicit_size(body: dict[str, Any], shape: Size = (1, 1)) -> Size | None:
    """``width`` and ``height`` (numbers, clamped), else ``size`` ("WxH"), else None.

    One side alone is kept, and the other follows ``shape`` (the ratio asked for, or the
    provider's default size).
    """
    width, height = _number(body, "width"), _number(body, "height")
    if width is not None and height is not None:
        return clamp_side(width), clamp_side(height)
    if width is not None:
        return clamp_side(width), clamp_side(clamp_side(width) * shape[1] / shape[0])
    if height is not None:
        return clamp_side(clamp_side(height) * shape[0] / shape[1]), clamp_side(height)
    size = body.get("size")
    if size is None or size == "auto":
        return None
    if not isinstance(size, str) or parse_size(size) is None:
        raise errors.invalid_parameter("size", "'size' must be a string like \"1024x768\".")
    return parse_size(size)


def image_options(body: dict[str, Any]) -> dict[str, Any]:
    """The gpt-image fields of a request that are set: ``quality``, ``background``,
    ``output_format``, ``moderation`` (each a short lower-case word) and ``output_compression``
    (0..100)."""
    options: dict[str, Any] = {}
    for name, documented in IMAGE_OPTIONS.items():
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not OPTION_WORD.match(value.strip().lower()):
            raise errors.invalid_parameter(
                name, f"'{name}' must be a word such as {', '.join(documented)}."
            )
        options[name] = value.strip().lower()
    compression = _integer(body, "output_compression", 0, 100)
    if compression is not None:
        options["output_compression"] = compression
    return options


def image_request(body: dict[str, Any], model: str, prompt: str, kind: str) -> ImageRequest:
    """Validate the generation fields of a request for a provider of ``kind``."""
    enhance = _boolean(body, "enhance", True)
    if _NO_ENHANCE.search(prompt):
        enhance = False
        prompt = tidy_prompt(_NO_ENHANCE.sub(" ", prompt))
    declared = provider_kind(kind)
    prompt, ratio_size = extract_ratio(prompt, declared.ratios)
    if not prompt:
        raise errors.invalid_parameter("prompt", "The prompt is empty once the size is taken out.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise errors.invalid_parameter(
            "prompt", f"The prompt is longer than {MAX_PROMPT_CHARS} characters."
        )
    shape = ratio_size or declared.default_size
    size = explicit_size(body, shape) or shape
    seed = _integer(body, "seed", 0, MAX_SEED, numeric_string=True)
    cfg = _number(body, "cfg")
    if cfg is not None and not 0 <= cfg <= 100:
        raise errors.invalid_parameter("cfg", "'cfg' must be a number from 0 to 100.")
    return ImageRequest(
        model=model,
        prompt=prompt,
        width=size[0],
        height=size[1],
        seed=seed if seed is not None else random.randrange(2**31 - 1),  # noqa: S311 (a seed, not a secret)
        seed_given=seed is not None,
        cfg=cfg,
        negative_prompt=_string(body, "negative_prompt"),
        n=_integer(body, "n", 1, MAX_N) or 1,
        stream=_boolean(body, "stream", False),
        enhance=enhance,
        options=image_options(body),
    )


def markdown_image(alt: str, link: str) -> str:
    """``![alt](link)`` with the alt text shortened and escaped so it cannot break the markdown."""
    alt = " ".join(alt.split())
    if len(alt) > ALT_TEXT_CHARS:
        alt = alt[: ALT_TEXT_CHARS - 1].rstrip() + "…"
    alt = re.sub(r"([\\\[\]()<>*_`!])", r"\\\1", alt)
    return f"![{alt or 'image'}]({link})"


def completion_id() -> str:
    """A fresh ``chatcmpl-`` id: 32 random hex digits, as unique as a UUID's and not a secret,
    so drawn from ``random`` (reseeded in each forked worker) without a system call."""
    return f"chatcmpl-{random.getrandbits(128):032x}"


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters a token) for ``usage``."""
    return (len(text) + 3) // 4


def chat_completion(model: str, content: str, prompt: str) -> dict[str, Any]:
    """A complete ``chat.completion`` object whose message is ``content``."""
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage(prompt, content),
    }


def model_list(entries: list[tuple[str, str]], created: int) -> dict[str, Any]:
    """The ``/v1/models`` answer for ``(model id, owner)`` pairs, in the given order."""
    return {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": created, "owned_by": owner}
            for model, owner in entries
        ],
    }


def include_usage(body: dict[str, Any]) -> bool:
    """``stream_options.include_usage``: whether a stream ends with a usage chunk."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise errors.invalid_parameter("stream_options", "'stream_options' must be an object.")
    return _boolean(options, "include_usage", False)


def usage(prompt: str, content: str) -> dict[str, int]:
    """The estimated ``usage`` of an answer."""
    prompt_tokens, completion_tokens = estimate_tokens(prompt), estimate_tokens(content)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_chunk(
    completion: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of a stream."""
    return {
        "id": completion,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(completion: str, created: int, model: str, counts: dict[str, int]):
    """The last chunk of a stream that asked for usage: no choices, only ``usage``."""
    return {
        "id": completion,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": counts,
    }


def sse_event(value: Any) -> bytes:
    """One Server-Sent Event carrying JSON (or the literal ``[DONE]``)."""
    data = value.encode() if isinstance(value, str) else jsontext.dumps(value)
    return b"data: " + data + b"\n\n"


SSE_KEEPALIVE = b": keep-alive\n\n"


@dataclass(frozen=True)
class ImagesApiRequest:
    """An Images API request: the generation, and how to return the images."""

    request: ImageRequest
    response_format: str


def images_api_request(body: dict[str, Any], model: str, kind: str) -> ImagesApiRequest:
    """Validate ``/v1/images/generations``: prompt, n, size, response_format, the gpt-image
    fields (passed on), and no others (extras ignored)."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise errors.invalid_parameter("prompt", "'prompt' must be a non-empty string.")
    response_format = body.get("response_format") or "b64_json"
    if response_format not in ("url", "b64_json"):
        raise errors.invalid_parameter(
            "response_format", '\'response_format\' must be "url" or "b64_json".'
        )
    fields = {
        k: v
        for k, v in body.items()
        if k in ("n", "size", "seed", "negative_prompt", "cfg", "enhance", "width", "height")
        or k in IMAGE_OPTIONS
        or k == "output_compression"
    }
    request = image_request(fields, model, prompt.strip(), kind)
    return ImagesApiRequest(request=request, response_format=response_format)


def images_response_json(
    entries: list[dict[str, str]], usage: dict[str, Any] | None = None
) -> bytes:
    """The Images API answer, with the provider's ``usage`` when it reported one, as UTF-8 JSON.

    Written by orjson straight into bytes: each ``b64_json`` string (a provider's base64, passed
    on as it came) is copied once, where building the text and then encoding it copied it twice.
    """
    answer: dict[str, Any] = {"created": int(time.time()), "data": entries}
    if usage:
        answer["usage"] = usage
    return jsontext.dumps(answer)
