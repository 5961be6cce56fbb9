"""The HTTP surface over real loopback requests: routes, auth, CORS, limits and every error code."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import CLIENT_KEYS, assert_error, call, chat_body, json_of, post_chat, with_env
from tornado.iostream import IOStream, StreamClosedError

from tornado_imagegate.handlers.base import upload_body_limit
from tornado_imagegate.options import OPTION

# Chat completions takes input images as data URIs: its body limit has room for them.
CHAT_BODY_LIMIT = upload_body_limit(OPTION["IMAGE_INPUT_MAX_BYTES"].default)


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/health", "/v1/health"])
async def test_health_is_public_and_ok(http_client, base_url, path):
    response = await call(http_client, base_url, path, key=None)
    assert response.code == 200
    assert json_of(response) == {"status": "ok"}


@pytest.mark.gen_test
async def test_welcome_page_names_the_base_url_and_models(http_client, base_url):
    response = await call(http_client, base_url, "/", key=None)
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.body.decode()
    assert f"{base_url}/v1" in page
    assert "imagegate-demo" in page
    assert "playground" in page.lower()


@pytest.mark.gen_test
async def test_static_files_of_the_page_are_served(http_client, base_url):
    for name in ("style.css", "playground.js"):
        response = await call(http_client, base_url, f"/static/{name}", key=None)
        assert response.code == 200, name


@pytest.mark.gen_test
@with_env(
    {
        "FLUX_GEN_MODEL": "flux-b,flux-a",
        "FLUX_GEN_API_BASE": "https://flux.invalid/v1/images/generations",
        "FLUX_GEN_API_KEY": "fk1",
        "IMAGE_GEN_MODEL_2": "direct-z",
        "IMAGE_GEN_API_BASE_2": "https://direct.invalid/v1/chat/completions",
        "IMAGE_GEN_API_KEY_2": "dk2",
        "IMAGE_GEN_MODEL_1": "direct-y",
        "IMAGE_GEN_API_BASE_1": "https://direct.invalid/v1/chat/completions",
        "IMAGE_GEN_API_KEY_1": "dk1",
        "SD_API_KEY": "sdk",
    }
)
async def test_models_are_listed_in_configuration_order(http_client, base_url):
    response = await call(http_client, base_url, "/v1/models")
    assert response.code == 200
    listing = json_of(response)
    assert listing["object"] == "list"
    ids = [entry["id"] for entry in listing["data"]]
    assert ids == ["flux-b", "flux-a", "direct-y", "direct-z", "Z-Image", "imagegate-demo"]
    for entry in listing["data"]:
        assert entry["object"] == "model"
        assert isinstance(entry["created"], int)
        assert entry["owned_by"]


@pytest.mark.gen_test
@pytest.mark.parametrize("key", CLIENT_KEYS)
async def test_each_configured_client_key_is_accepted(http_client, base_url, key):
    response = await call(http_client, base_url, "/v1/models", key=key)
    assert response.code == 200


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Bearer {CLIENT_KEYS[0]}x"},
        {"Authorization": f"Basic {CLIENT_KEYS[0]}"},
        {"Authorization": CLIENT_KEYS[0]},
        {"Authorization": "Bearer "},
    ],
)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/v1/models", None), ("POST", "/v1/chat/completions", chat_body())],
)
async def test_missing_or_wrong_key_is_401(http_client, base_url, headers, method, path, body):
    response = await call(
        http_client, base_url, path, method=method, body=body, headers=headers, key=None
    )
    error = assert_error(response, 401, "invalid_api_key")
    assert CLIENT_KEYS[0] not in error["message"]


@pytest.mark.gen_test
async def test_a_key_in_the_query_string_is_not_accepted(http_client, base_url):
    response = await call(http_client, base_url, f"/v1/models?api_key={CLIENT_KEYS[0]}", key=None)
    assert_error(response, 401, "invalid_api_key")


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/nope", "/v1/nothing", "/v2/models", "/v1/models/extra/x"])
async def test_unknown_path_is_404_path_not_found(http_client, base_url, path):
    response = await call(http_client, base_url, path)
    error = assert_error(response, 404, "path_not_found")
    assert path in error["message"]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/health"),
        ("POST", "/v1/models"),
        ("GET", "/v1/chat/completions"),
        ("PUT", "/v1/chat/completions"),
        ("POST", "/image-proxy"),
        ("PATCH", "/"),
    ],
)
async def test_wrong_method_is_405(http_client, base_url, method, path):
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    response = await call(http_client, base_url, path, method=method, body=body)
    assert_error(response, 405, "method_not_allowed")


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/anything/at/all", "/"])
async def test_cors_preflight_on_any_path_is_204_without_auth(http_client, base_url, path):
    response = await call(
        http_client,
        base_url,
        path,
        method="OPTIONS",
        key=None,
        headers={
            "Origin": "https://chat.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os",
        },
    )
    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "x-stainless-os" in response.headers["Access-Control-Allow-Headers"]


@pytest.mark.gen_test
async def test_cors_header_is_on_errors_too(http_client, base_url):
    response = await call(
        http_client, base_url, "/v1/models", key=None, headers={"Origin": "https://chat.example"}
    )
    assert response.code == 401
    assert response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.gen_test
@with_env({"CORS_ALLOW_ORIGINS": "https://chat.example, https://other.example"})
async def test_cors_origins_can_be_restricted(http_client, base_url):
    allowed = await call(
        http_client, base_url, "/health", headers={"Origin": "https://chat.example"}
    )
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://chat.example"
    assert "Origin" in allowed.headers.get("Vary", "")
    refused = await call(
        http_client, base_url, "/health", headers={"Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in refused.headers


@pytest.mark.gen_test
async def test_body_over_the_limit_is_413(http_client, base_url):
    body = json.dumps(chat_body("x" * (CHAT_BODY_LIMIT + 10)))
    response = await post_chat(http_client, base_url, body)
    assert_error(response, 413, "request_too_large")


@pytest.mark.gen_test
async def test_chunked_body_over_the_limit_is_413(http_server, http_port):
    stream = IOStream(socket.socket())
    await stream.connect(("127.0.0.1", http_port))
    await stream.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
        b"Authorization: Bearer " + CLIENT_KEYS[0].encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 65536
    try:
        for _ in range(CHAT_BODY_LIMIT // len(chunk) + 4):
            await stream.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await stream.write(b"0\r\n\r\n")
    except StreamClosedError:
        pass  # the server may answer and close before reading it all
    head = await stream.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    stream.close()


@pytest.mark.gen_test
async def test_server_keeps_serving_after_a_413(http_client, base_url):
    body = b"{" + b" " * (CHAT_BODY_LIMIT + 1) + b"}"
    await post_chat(http_client, base_url, body)
    response = await call(http_client, base_url, "/health")
    assert response.code == 200


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"{",
        b"[1, 2]",
        b'"a string"',
        b"null",
        b"42",
        b"\xff\xfe\x00",
        b"[" * 100000 + b"]" * 100000,
        # lone surrogates, which no provider could be sent, in either case of the escape
        b'{"model": "imagegate-demo", "messages": [{"role": "user", "content": "a \\ud800"}]}',
        b'{"model": "imagegate-demo", "messages": [{"role": "user", "content": "\\uDFFF cat"}]}',
    ],
)
async def test_body_that_is_not_a_json_object_is_400_invalid_json(http_client, base_url, body):
    response = await post_chat(http_client, base_url, body)
    assert_error(response, 400, "invalid_json")


@pytest.mark.gen_test
async def test_a_paired_surrogate_escape_is_a_valid_prompt(http_client, base_url):
    body = (
        b'{"model": "imagegate-demo",'
        b' "messages": [{"role": "user", "content": "\\ud83d\\udc08 cat"}]}'
    )
    response = await post_chat(http_client, base_url, body)
    assert response.code == 200, response.body


@pytest.mark.gen_test
@pytest.mark.parametrize("model", [None, ""])
async def test_missing_model_is_400_missing_model_field(http_client, base_url, model):
    body = chat_body()
    if model is None:
        del body["model"]
    else:
        body["model"] = model
    response = await post_chat(http_client, base_url, body)
    error = assert_error(response, 400, "missing_model_field")
    assert error["param"] == "model"


@pytest.mark.gen_test
async def test_unknown_model_is_404_model_not_found(http_client, base_url):
    response = await post_chat(
        http_client,
        base_url,
        chat_body(model="dall-e-9"),
    )
    error = assert_error(response, 404, "model_not_found")
    assert "dall-e-9" in error["message"]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": 42}, "model"),
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [1, 2]}, "messages"),
        ({"messages": [{"role": "system", "content": "be nice"}]}, "messages"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages"),
        ({"messages": [{"role": "user", "content": "   "}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
        ({"prompt": 5}, "prompt"),
        ({"width": "1024", "height": 512}, "width"),
        ({"width": True, "height": 512}, "width"),
        ({"size": "big"}, "size"),
        ({"size": 1024}, "size"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": "-7"}, "seed"),
        ({"seed": "seven"}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"n": 0}, "n"),
        ({"n": 11}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"cfg": "high"}, "cfg"),
        ({"cfg": 1000}, "cfg"),
        ({"negative_prompt": ["blur"]}, "negative_prompt"),
        ({"enhance": "no"}, "enhance"),
        ({"messages": [{"role": "user", "content": "16:9"}]}, "prompt"),
    ],
)
async def test_wrong_field_type_or_range_is_400_invalid_parameters(
    http_client, base_url, change, param
):
    body = {**chat_body(), **change}
    response = await post_chat(http_client, base_url, body)
    error = assert_error(response, 400, "invalid_parameters")
    assert error["param"] == param


@pytest.mark.gen_test
async def test_hostile_inputs_never_give_a_500(http_client, base_url):
    hostile = [
        {"model": {"$gt": ""}},
        {"model": "imagegate-demo", "messages": [{"role": "user", "content": None}]},
        {"model": "imagegate-demo", "messages": [{"role": "user"}]},
        {"model": "imagegate-demo", "messages": [{"role": "user", "content": [None, 3, {}]}]},
        {"model": "imagegate-demo", "messages": None},
        {
            "model": "imagegate-demo",
            "messages": [{"role": "user", "content": "a"}],
            "width": 1e308,
            "height": -1e308,
        },
        {"model": "imagegate-demo", "messages": [{"role": "user", "content": "\u0000\ud800"}]},
        {"model": "imagegate-demo" * 10000},
        {"model": "imagegate-demo", "prompt": "x" * 100000},
    ]
    for body in hostile:
        response = await post_chat(http_client, base_url, json.dumps(body))
        assert response.code < 500, (body, response.body)
        assert b"Traceback" not in response.body
    raw = [
        b'{"model": "imagegate-demo", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": NaN}',
        b'{"model": "imagegate-demo", "seed": 1e999}',
    ]
    for body in raw:
        response = await post_chat(http_client, base_url, body)
        assert response.code < 500, (body, response.body)


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/static/../setup.cfg", "/static/%2e%2e/%2e%2e/etc/passwd"])
async def test_static_files_cannot_escape_their_folder(http_client, base_url, path):
    response = await call(http_client, base_url, path, key=None)
    assert response.code in (403, 404)
    assert json_of(response)["error"]["code"]
    assert b"[metadata]" not in response.body and b"root:" not in response.body
