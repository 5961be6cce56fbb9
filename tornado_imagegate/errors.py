"""Gateway errors: an HTTP status, the OpenAI error type and code, and a public message."""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Any


class GatewayError(Exception):
    """An error with a public message for the client; ``detail`` is for the log only."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        error_type: str | None = None,
        param: str | None = None,
        detail: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.error_type = error_type or default_type(status)
        self.param = param
        self.detail = detail
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        """The OpenAI error body: all four keys, ``None`` where empty."""
        return error_envelope(self.message, self.error_type, self.param, self.code)


def default_type(status: int) -> str:
    """The OpenAI ``type`` that goes with an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status in (502, 504):
        return "upstream_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_envelope(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """Build ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def from_status(status: int) -> GatewayError:
    """The error to send for a bare HTTP status raised by Tornado itself (405, 413, ...)."""
    codes = {
        400: ("bad_request", "The request could not be understood."),
        404: ("path_not_found", "Not found."),
        405: ("method_not_allowed", "Method not allowed on this path."),
        413: ("request_too_large", "The request body is too large."),
    }
    if status in codes:
        code, message = codes[status]
        return GatewayError(status, code, message)
    if status >= 500:
        return GatewayError(500, "internal_error", "Unhandled error.")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return GatewayError(status, phrase.lower().replace(" ", "_"), phrase + ".")


def invalid_json(detail: str = "") -> GatewayError:
    """The body is not a JSON object."""
    return GatewayError(
        400, "invalid_json", "The request body must be a JSON object.", detail=detail
    )


def invalid_parameter(param: str, message: str) -> GatewayError:
    """A field has the wrong type or range."""
    return GatewayError(400, "invalid_parameters", message, param=param)


def _shown(name: str) -> str:
    """A client-given model name or path as an error message shows it: at most 100 characters."""
    return name if len(name) <= 100 else name[:100] + "..."


def missing_model() -> GatewayError:
    """The request names no model."""
    return GatewayError(
        400,
        "missing_model_field",
        "The request must name a model in the 'model' field.",
        param="model",
    )


def model_not_found(model: str) -> GatewayError:
    """The requested model is not configured."""
    return GatewayError(
        404,
        "model_not_found",
        f"The model '{_shown(model)}' does not exist on this gateway; "
        "GET /v1/models lists the models.",
        param="model",
    )


def invalid_api_key() -> GatewayError:
    """Missing or wrong client key."""
    return GatewayError(
        401,
        "invalid_api_key",
        "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
    )


def request_too_large(limit: int) -> GatewayError:
    """The request body is over the limit."""
    return GatewayError(
        413, "request_too_large", f"The request body is larger than {limit // 1024} KiB."
    )


def image_input_not_supported(model: str) -> GatewayError:
    """400: the request carries images for a model that takes none."""
    return GatewayError(
        400,
        "image_input_not_supported",
        f"The model '{_shown(model)}' does not take input images; send text only, or pick a "
        "model that edits images.",
        param="model",
    )


def mask_not_supported(model: str) -> GatewayError:
    """400: an edit mask for a model whose provider has no field for one."""
    return GatewayError(
        400,
        "mask_not_supported",
        f"The model '{_shown(model)}' does not take a mask; send the edit without one, or pick a "
        "model that inpaints.",
        param="mask",
    )


def invalid_image_input(message: str, param: str = "messages") -> GatewayError:
    """400: an input image that cannot be used (not a raster image, unreachable, too many)."""
    return GatewayError(400, "invalid_image_input", message, param=param)


def image_input_too_large(limit: int, param: str = "messages") -> GatewayError:
    """413: an input image over IMAGE_INPUT_MAX_BYTES."""
    return GatewayError(
        413,
        "image_input_too_large",
        f"An input image is larger than {limit // 1024} KiB.",
        param=param,
    )


def path_not_found(path: str) -> GatewayError:
    """No route matches."""
    return GatewayError(404, "path_not_found", f"Path {_shown(path)} not found.")


class UpstreamError(Exception):
    """An outbound call that failed; ``kind`` says how, ``detail`` is for the log only.

    Kinds: ``timeout``, ``connect``, ``refused_address``, ``too_large``, ``status`` (an HTTP error
    answer, with ``status``), ``bad_answer`` (an answer we cannot use), ``cancelled``.
    """

    def __init__(
        self,
        kind: str,
        detail: str = "",
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retry_after = retry_after


NO_RETRY = {"x-should-retry": "false"}


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def upstream_unavailable(what: str, wait: float, reason: str = "") -> GatewayError:
    """503: every key of ``what`` is resting; the client may come back after ``wait`` seconds.

    No ``x-should-retry: false`` here: an SDK that waits ``Retry-After`` and retries does right.
    """
    seconds = retry_after_header(wait)
    message = f"{what[:1].upper()}{what[1:]}: every key is resting after recent failures"
    message += f" ({reason})" if reason else ""
    message += f"; try again in {seconds}s."
    return GatewayError(503, "upstream_unavailable", message, headers={"Retry-After": seconds})


_UPSTREAM_MESSAGES = {
    "timeout": "did not answer in time",
    "connect": "could not be reached",
    "refused_address": (
        "is on an address the gateway may not fetch from (private and loopback addresses are "
        "refused unless IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS is set)"
    ),
    "too_large": "sent an answer larger than the gateway accepts",
    "status": "answered with an error",
    "bad_answer": "sent an answer the gateway cannot use",
    "cancelled": "request was cancelled",
}


def from_upstream(error: UpstreamError, what: str) -> GatewayError:
    """Map an outbound failure to the client's error: 504 for timeouts, else 502.

    ``what`` names the upstream for the client ("the image host", "provider group FLUX_GEN").
    The answer carries ``x-should-retry: false`` so SDKs do not turn one request into three.
    """
    reason = _UPSTREAM_MESSAGES.get(error.kind, "failed")
    if error.kind == "status" and error.status:
        reason = f"answered HTTP {error.status}"
    message = f"{what[:1].upper()}{what[1:]} {reason}."
    if error.kind == "timeout":
        return GatewayError(504, "upstream_timeout", message, detail=error.detail, headers=NO_RETRY)
    return GatewayError(502, "upstream_error", message, detail=error.detail, headers=NO_RETRY)
