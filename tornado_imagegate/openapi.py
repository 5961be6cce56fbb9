"""The OpenAPI 3.1 description of the public API, served at ``GET /openapi.json``.

Built here rather than kept as a JSON file so that its limits come from the constants the
validation uses (``n``, sides, seed, prompt length) and cannot drift from them.
"""

from __future__ import annotations

import functools
from typing import Any

from tornado_imagegate import __version__
from tornado_imagegate.config import DEMO_MODEL
from tornado_imagegate.openai_api import (
    IMAGE_OPTIONS,
    MAX_N,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    OPTION_WORD,
)
from tornado_imagegate.sizing import MAX_SIDE, MIN_SIDE

Schema = dict[str, Any]

BEARER = [{"bearerAuth": []}]
PUBLIC: list[dict[str, list[str]]] = []


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _ok(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": _json(schema)}


def _error(description: str, *codes: str, headers: Schema | None = None) -> Schema:
    """An error answer: the OpenAI envelope, with the ``code`` values it can carry."""
    listed = ", ".join(f"`{code}`" for code in codes)
    response: Schema = {
        "description": f"{description} (`error.code`: {listed})." if codes else description,
        "content": _json(_ref("ErrorEnvelope")),
    }
    if headers:
        response["headers"] = headers
    return response


def _nullable(schema: Schema) -> Schema:
    """``schema`` or ``null``: the gateway treats an explicit ``null`` as the field left out."""
    return {"anyOf": [schema, {"type": "null"}]}


_NO_RETRY = {
    "x-should-retry": {
        "description": "`false`: tells OpenAI SDKs not to repeat a paid generation.",
        "schema": {"type": "string", "enum": ["false"]},
    }
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until a retry can succeed.",
        "schema": {"type": "integer", "minimum": 0},
    }
}
_UNAUTHORIZED = _error("Missing or wrong client key", "invalid_api_key")
_TOO_LARGE = _error("The request body is too large", "request_too_large")
_TOO_LARGE_WITH_IMAGES = _error(
    "The request body, or an input image (IMAGE_INPUT_MAX_BYTES), is too large",
    "request_too_large",
    "image_input_too_large",
)
_BAD_GATEWAY = _error(
    "Every key of the provider failed, or it answered without a usable image",
    "upstream_error",
    headers=_NO_RETRY,
)
_UNAVAILABLE = _error(
    "Every key of the provider is resting after failures",
    "upstream_unavailable",
    headers=_RETRY_AFTER,
)
_TIMEOUT = _error("The provider did not answer in time", "upstream_timeout", headers=_NO_RETRY)

_GENERATION_FIELDS: Schema = {
    "size": _nullable(
        {
            "type": "string",
            "description": '"WxH" (sides clamped to the limits), or "auto" for the default.',
            "pattern": r"^(?:auto|\s*[0-9]{1,5}\s*[xX×*]\s*[0-9]{1,5}\s*)$",
            "examples": ["1024x1024", "1024x576"],
        }
    ),
    "width": _nullable(
        {
            "type": "number",
            "description": f"Image width, rounded and clamped to {MIN_SIDE}..{MAX_SIDE}. With "
            "`height` it wins over `size`; alone, the height follows the ratio asked for in the "
            "prompt (or the default size).",
            "examples": [1024],
        }
    ),
    "height": _nullable(
        {
            "type": "number",
            "description": f"Image height, rounded and clamped to {MIN_SIDE}..{MAX_SIDE}; as "
            "`width`.",
            "examples": [768],
        }
    ),
    "n": _nullable(
        {"type": "integer", "minimum": 1, "maximum": MAX_N, "description": "Images to make."}
    ),
    "seed": {
        "description": "Seed for the provider (a whole number, also written as a string of "
        "digits); random when left out.",
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
            {"type": "string", "pattern": r"^\s*[0-9]+\s*$", "examples": ["42"]},
            {"type": "null"},
        ],
    },
    "cfg": _nullable(
        {"type": "number", "minimum": 0, "maximum": 100, "description": "Guidance scale."}
    ),
    "negative_prompt": _nullable({"type": "string", "description": "What to keep out."}),
    "enhance": _nullable(
        {
            "type": "boolean",
            "description": "`false` skips prompt optimisation (as does `no-enhance` in the "
            "prompt). Default `true`.",
        }
    ),
    **{
        name: _nullable(
            {
                "type": "string",
                "pattern": OPTION_WORD.pattern,
                "description": f"Passed to `openai-images` providers as sent (gpt-image); "
                f"OpenAI documents {', '.join(f'`{value}`' for value in documented)}. Other "
                "kinds ignore it.",
                "examples": [documented[0]],
            }
        )
        for name, documented in IMAGE_OPTIONS.items()
    },
    "output_compression": _nullable(
        {
            "type": "integer",
            "minimum": 0,
            "maximum": 100,
            "description": "Passed to `openai-images` providers as sent (gpt-image, jpeg or "
            "webp output). Other kinds ignore it.",
        }
    ),
}

_PROMPT_RULES = (
    f"At most {MAX_PROMPT_CHARS} characters. An aspect ratio written in it (`16:9`, `16：9`) picks "
    "the size and is removed from it; an explicit size wins over it."
)

SCHEMAS: dict[str, Schema] = {
    "ErrorEnvelope": {
        "type": "object",
        "description": "Every error, on every path: all four keys present, `null` where empty.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string", "minLength": 1},
                    "type": {
                        "type": "string",
                        "examples": [
                            "invalid_request_error",
                            "authentication_error",
                            "upstream_error",
                        ],
                    },
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
    "Readiness": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "examples": ["ready", "shutting_down"]},
            "models": {"type": "integer", "minimum": 0},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("Model")},
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string", "examples": [DEMO_MODEL]},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    },
    "ChatMessage": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "examples": ["user", "system", "assistant"]},
            "content": {
                "description": "A string, or a list of parts whose text parts are joined with "
                "spaces (other parts are ignored).",
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": _ref("ContentPart")},
                    {"type": "null"},
                ],
            },
        },
    },
    "ContentPart": {
        "anyOf": [
            {"type": "string"},
            {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "examples": ["text", "image_url"]},
                    "text": {"type": "string"},
                },
            },
        ]
    },
    "ChatCompletionRequest": {
        "type": "object",
        "description": "The prompt is a non-empty top-level `prompt`, else the text of the last "
        "`user` message. " + _PROMPT_RULES + " Other OpenAI fields are accepted and ignored.",
        "required": ["model"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "examples": [DEMO_MODEL]},
            "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
            "prompt": _nullable({"type": "string", "description": "Wins over `messages`."}),
            "stream": _nullable(
                {"type": "boolean", "description": "Answer as Server-Sent Events."}
            ),
            "stream_options": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "include_usage": _nullable(
                            {"type": "boolean", "description": "End with a usage chunk."}
                        )
                    },
                }
            ),
            **_GENERATION_FIELDS,
        },
        "examples": [
            {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "a lighthouse 16:9"}]},
            {
                "model": DEMO_MODEL,
                "messages": [{"role": "user", "content": "a lighthouse"}],
                "size": "512x512",
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ],
    },
    "Usage": {
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
        "properties": {
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "description": "The content is markdown: `![alt](IMAGE_LINK)`, then, when the prompt was "
        "optimised, a blank line and `Optimized prompt: ...` (for a follow-up refined without "
        "the optimiser, `Prompt: ...`). A client's housekeeping task "
        "(title, tags) gets short text instead.",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string", "pattern": "^chatcmpl-"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        "message": {
                            "type": "object",
                            "required": ["role", "content"],
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": {"type": "string"},
                            },
                        },
                        "logprobs": {"type": "null"},
                        "finish_reason": {"const": "stop"},
                    },
                },
            },
            "usage": _ref("Usage"),
        },
    },
    "ChatCompletionChunk": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string", "pattern": "^chatcmpl-"},
            "object": {"const": "chat.completion.chunk"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "description": "One choice; empty in the final usage chunk.",
                "items": {
                    "type": "object",
                    "required": ["index", "delta", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        "delta": {
                            "type": "object",
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": {"type": "string"},
                                "reasoning_content": {"type": "string"},
                            },
                        },
                        "logprobs": {"type": "null"},
                        "finish_reason": {"type": ["string", "null"]},
                    },
                },
            },
            "usage": _ref("Usage"),
        },
    },
    "ChatCompletionEvent": {
        "type": "object",
        "description": "One Server-Sent Event of a stream (this schema describes each event, "
        "as `itemSchema` does from OpenAPI 3.2). In order: the role chunk at once, "
        "`: keep-alive` comments while the image is made, the content chunk, a chunk with "
        "`finish_reason`, the usage chunk if asked for, then `data: [DONE]`. A failure after "
        'the start is an `{"error": ...}` event, then `[DONE]`.',
        "required": ["data"],
        "properties": {
            "data": {
                "type": "string",
                "if": {"const": "[DONE]"},
                "else": {
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "anyOf": [_ref("ChatCompletionChunk"), _ref("ErrorEnvelope")]
                    },
                },
            }
        },
    },
    "ImageGenerationRequest": {
        "type": "object",
        "description": "The OpenAI Images API. " + _PROMPT_RULES + " Other fields (`style`, "
        "`user`, ...) are accepted and ignored.",
        "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string", "pattern": r"\S", "examples": ["a lighthouse at dusk"]},
            "model": {
                "type": "string",
                "description": "A configured model; a missing or unknown one (`dall-e-3`) gets "
                "the gateway's default image model.",
                "examples": [DEMO_MODEL],
            },
            "response_format": _nullable(
                {"type": "string", "enum": ["url", "b64_json"], "default": "b64_json"}
            ),
            **_GENERATION_FIELDS,
        },
    },
    "ImageEditRequest": {
        "type": "object",
        "description": "The Images API's edit form: the image(s) to edit, an optional mask, "
        "and the generation's fields as text.",
        "required": ["image", "prompt"],
        "properties": {
            "image": {"type": "string", "format": "binary"},
            "image[]": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "mask": {"type": "string", "format": "binary"},
            "prompt": {"type": "string", "pattern": r"\S", "examples": ["make it a watercolour"]},
            "model": {"type": "string", "examples": [DEMO_MODEL]},
            "n": {"type": "integer", "minimum": 1, "maximum": 10},
            "size": {"type": "string", "examples": ["1024x1024"]},
            "response_format": {"type": "string", "enum": ["url", "b64_json"]},
        },
    },
    "ImagesResponse": {
        "type": "object",
        "required": ["created", "data"],
        "properties": {
            "created": {"type": "integer"},
            "data": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "description": "`url` or `b64_json`, as `response_format` asked.",
                    "required": ["revised_prompt"],
                    "oneOf": [{"required": ["url"]}, {"required": ["b64_json"]}],
                    "properties": {
                        "url": {
                            "type": "string",
                            "format": "uri",
                            "description": "An absolute link to this gateway's `/image-proxy`.",
                        },
                        "b64_json": {"type": "string", "contentEncoding": "base64"},
                        "revised_prompt": {
                            "type": "string",
                            "description": "The prompt the image was made from (optimised, "
                            "when the optimiser is on).",
                        },
                    },
                },
            },
            "usage": {
                "type": "object",
                "description": "The provider's token count, only when it reported one "
                "(gpt-image's `usage`; Gemini's as `input_tokens`, `output_tokens`, "
                "`total_tokens`), summed over the provider's answers.",
                "additionalProperties": {
                    "anyOf": [
                        {"type": "integer"},
                        {"type": "object", "additionalProperties": {"type": "integer"}},
                    ]
                },
                "examples": [{"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210}],
            },
        },
    },
}


def _health(summary: str) -> Schema:
    return {
        "get": {
            "summary": summary,
            "description": "Never calls an upstream.",
            "security": PUBLIC,
            "responses": {"200": _ok("The process answers.", _ref("Health"))},
        }
    }


PATHS: dict[str, Schema] = {
    "/health": _health("Liveness"),
    "/v1/health": _health("Liveness (under the /v1 prefix)"),
    "/ready": {
        "get": {
            "summary": "Readiness",
            "security": PUBLIC,
            "responses": {
                "200": _ok("Serving normally.", _ref("Readiness")),
                "503": _ok("Not ready; `status` gives the reason.", _ref("Readiness")),
            },
        }
    },
    "/v1/models": {
        "get": {
            "summary": "The configured models, in configuration order",
            "security": BEARER,
            "responses": {
                "200": _ok("The OpenAI model list.", _ref("ModelList")),
                "401": _UNAUTHORIZED,
            },
        }
    },
    "/v1/chat/completions": {
        "post": {
            "summary": "An image for the last user message, as a chat completion",
            "security": BEARER,
            "requestBody": {"required": True, "content": _json(_ref("ChatCompletionRequest"))},
            "responses": {
                "200": {
                    "description": "A `chat.completion` object, or with `stream: true` "
                    "Server-Sent Events of `chat.completion.chunk` objects.",
                    "content": {
                        **_json(_ref("ChatCompletion")),
                        "text/event-stream": {"schema": _ref("ChatCompletionEvent")},
                    },
                },
                "400": _error(
                    "The body is not a JSON object, a field has the wrong type or range, the "
                    "model is missing, the model cannot take input images, or the provider "
                    "refused the prompt",
                    "invalid_json",
                    "invalid_parameters",
                    "missing_model_field",
                    "image_input_not_supported",
                    "invalid_image_input",
                    "upstream_rejected",
                ),
                "401": _UNAUTHORIZED,
                "404": _error("The model is not configured", "model_not_found"),
                "413": _TOO_LARGE_WITH_IMAGES,
                "502": _BAD_GATEWAY,
                "503": _UNAVAILABLE,
                "504": _TIMEOUT,
            },
        }
    },
    "/v1/images/generations": {
        "post": {
            "summary": "OpenAI Images API: generate images",
            "security": BEARER,
            "requestBody": {"required": True, "content": _json(_ref("ImageGenerationRequest"))},
            "responses": {
                "200": _ok("The images.", _ref("ImagesResponse")),
                "400": _error(
                    "The body is not a JSON object, a field has the wrong type or range, or "
                    "the provider refused the prompt",
                    "invalid_json",
                    "invalid_parameters",
                    "upstream_rejected",
                ),
                "401": _UNAUTHORIZED,
                "413": _TOO_LARGE,
                "502": _BAD_GATEWAY,
                "503": _UNAVAILABLE,
                "504": _TIMEOUT,
            },
        }
    },
    "/v1/images/edits": {
        "post": {
            "summary": "OpenAI Images API: edit images (as the openai SDK's images.edit sends)",
            "description": "For models that take input images; others answer 400 "
            "`image_input_not_supported`. A mask only for models whose provider takes one "
            "(others: 400 `mask_not_supported`). Each image and the mask at most "
            "IMAGE_INPUT_MAX_BYTES, a raster type recognised from its bytes.",
            "security": BEARER,
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": {"schema": _ref("ImageEditRequest")}},
            },
            "responses": {
                "200": _ok("The images.", _ref("ImagesResponse")),
                "400": _error(
                    "Not a form, no image, a field has the wrong type or range, an image that "
                    "is not a raster image, a model that takes no images (or no mask), or the "
                    "provider refused the prompt",
                    "invalid_parameters",
                    "invalid_image_input",
                    "image_input_not_supported",
                    "mask_not_supported",
                    "upstream_rejected",
                ),
                "401": _UNAUTHORIZED,
                "413": _TOO_LARGE_WITH_IMAGES,
                "502": _BAD_GATEWAY,
                "503": _UNAVAILABLE,
                "504": _TIMEOUT,
            },
        }
    },
    "/image-proxy": {
        "get": {
            "summary": "An image this gateway keeps, through a link it issued",
            "description": "Only links the gateway put in its own answers work: `?id=...` for "
            "an image it keeps, or the signed `?u=...&e=...&s=...` form for an image it fetches "
            "from the provider on first use. Never an open proxy.",
            "security": PUBLIC,
            "parameters": [
                {"name": "id", "in": "query", "schema": {"type": "string"}},
                {"name": "u", "in": "query", "schema": {"type": "string"}},
                {"name": "e", "in": "query", "schema": {"type": "string"}},
                {"name": "s", "in": "query", "schema": {"type": "string"}},
                {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "The image bytes (immutable: cached for a year).",
                    "headers": {
                        "ETag": {"schema": {"type": "string"}},
                        "Cache-Control": {"schema": {"type": "string"}},
                    },
                    "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
                },
                "304": {"description": "The client's copy (`If-None-Match`) is current."},
                "403": _error(
                    "Not a link this gateway issued, or one too old to fetch its image again",
                    "forbidden_image_link",
                    "expired_image_link",
                ),
                "404": _error("The image is no longer kept", "image_not_found"),
                "502": _error(
                    "The image host failed or sent something that is not an image",
                    "upstream_error",
                    headers=_NO_RETRY,
                ),
                "503": _error(
                    "Only the shared tier holds the image and it is unreachable",
                    "storage_unavailable",
                    headers=_RETRY_AFTER,
                ),
                "504": _error(
                    "The image host did not answer in time", "upstream_timeout", headers=_NO_RETRY
                ),
            },
        }
    },
}


@functools.cache
def document() -> Schema:
    """The OpenAPI document, without ``servers`` (the handler adds the request's base URL)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tornado-imagegate",
            "version": __version__,
            "summary": "OpenAI-compatible image-generation gateway",
            "description": "Chat completions and the Images API answered with images. The `/v1` "
            "prefix is optional (`/chat/completions` works too). Every error is the OpenAI "
            'envelope `{"error": {message, type, param, code}}`; any other method on a '
            "documented path answers 405 `method_not_allowed`, and an `OPTIONS` preflight "
            "204 on any path.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A client key (`AUTHORIZED_API_KEY`).",
                }
            },
        },
    }


def for_base_url(base_url: str) -> Schema:
    """The document with ``servers`` set to the gateway's base URL as the client reaches it."""
    return {**document(), "servers": [{"url": base_url}]}
