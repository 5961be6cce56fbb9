"""GET /openapi.json: a valid OpenAPI 3.1 document, and a bounded fuzz run of a live gateway.

The gateway is the real ``imagegate`` command (demo provider only: no network) on loopback.
Schemathesis sends each documented operation its examples, its coverage cases (every field at its
boundaries, of the wrong type, missing; undocumented methods) and a fixed number of generated
requests, valid and invalid, seeded and never shrunk: the run is reproducible and bounded. Every
answer must be documented and match its schema (event streams event by event), none may be a 5xx,
every error must be the OpenAI envelope, and no body nor the gateway's stderr may hold a traceback.
A failure prints the request to repeat as a curl command.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from conftest import CLIENT_KEYS, PROXY_SECRET
from processes import Gateway, clean_env
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tornado_imagegate import __version__, openapi
from tornado_imagegate.config import DEMO_MODEL

EXAMPLES_PER_OPERATION = 50
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20240610,
        "generation": {
            "mode": "all",  # valid and invalid requests
            "max-examples": EXAMPLES_PER_OPERATION,
            "deterministic": True,
            "no-shrink": True,
            "database": "none",
        },
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
    }
)
# The document as the package builds it: the served one is checked to be the same below.
SCHEMA = schemathesis.openapi.from_dict(openapi.for_base_url("http://127.0.0.1"), config=CONFIG)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
WRONG_KEY = "test-client-key-that-is-wrong"
# One request in five goes without a key or with a wrong one.
KEY_ROTATION = (*CLIENT_KEYS, *CLIENT_KEYS, None, *CLIENT_KEYS, *CLIENT_KEYS, WRONG_KEY)
TALLY: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The embedded default (demo provider only) as a real process, memory only."""
    stderr = tmp_path_factory.mktemp("openapi") / "stderr.log"
    env = clean_env(
        AUTHORIZED_API_KEY=",".join(CLIENT_KEYS),
        IMAGE_PROXY_SECRET=PROXY_SECRET,
        IMAGEGATE_DATA_DIR="",
    )
    process = Gateway(["--port", "0"], env, stderr)
    try:
        process.base_url = process.wait_listening()  # type: ignore[attr-defined]
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """An HTTP session that never goes through a proxy from the environment."""
    with requests.Session() as http:
        http.trust_env = False
        yield http


@pytest.fixture(scope="module")
def served(gateway: Gateway, session: requests.Session) -> requests.Response:
    """The answer to ``GET /openapi.json``."""
    return session.get(gateway.base_url + "/openapi.json", timeout=10)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def tally(gateway: Gateway) -> Iterator[dict[str, collections.Counter[int]]]:
    """Statuses seen per operation; printed (``-s``) at the end with the run's duration."""
    started = time.monotonic()
    yield TALLY
    total = sum(sum(statuses.values()) for statuses in TALLY.values())
    print(f"\nfuzz: {total} requests in {time.monotonic() - started:.1f} s")
    for label, statuses in TALLY.items():
        print(f"  {label}: {sum(statuses.values())} requests, {dict(sorted(statuses.items()))}")


def test_document_is_served_publicly_as_json(gateway, served):
    assert served.status_code == 200
    assert served.headers["Content-Type"].startswith("application/json")
    assert served.headers["Access-Control-Allow-Origin"] == "*"
    document = served.json()
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["version"] == __version__
    assert document["servers"] == [{"url": gateway.base_url}]
    assert {**document, "servers": None} == {**SCHEMA.raw_schema, "servers": None}


def test_document_is_valid_openapi_3_1_and_describes_the_public_api(served):
    loaded = schemathesis.openapi.from_dict(served.json(), config=schemathesis.Config())
    loaded.validate()  # raises on any violation of the OpenAPI 3.1 meta-schema
    labels = {result.ok().label for result in loaded.get_all_operations()}
    assert labels == {
        "GET /health",
        "GET /v1/health",
        "GET /ready",
        "GET /v1/models",
        "POST /v1/chat/completions",
        "POST /v1/images/generations",
        "POST /v1/images/edits",
        "GET /image-proxy",
    }
    document = loaded.raw_schema
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, method in [
        ("/v1/models", "get"),
        ("/v1/chat/completions", "post"),
        ("/v1/images/generations", "post"),
        ("/v1/images/edits", "post"),
    ]:
        operation = document["paths"][path][method]
        assert operation["security"] == [{"bearerAuth": []}]
        assert "401" in operation["responses"]


def test_an_invalid_document_is_refused(served):
    """The validation above can fail: here a response lacks its required description."""
    broken = served.json()
    del broken["paths"]["/health"]["get"]["responses"]["200"]["description"]
    with pytest.raises(Exception, match="description"):
        schemathesis.openapi.from_dict(broken, config=schemathesis.Config()).validate()


def new_stderr(gateway: Gateway) -> str:
    """What the gateway wrote to stderr since the last look."""
    text = gateway.stderr()
    seen = getattr(gateway, "stderr_seen", 0)
    gateway.stderr_seen = len(text)  # type: ignore[attr-defined]
    return text[seen:]


def next_key(label: str) -> str | None:
    """The key for an operation's next request, in turn (the same run sends the same keys)."""
    return KEY_ROTATION[sum(TALLY[label].values()) % len(KEY_ROTATION)]


def anchor_chat(case: Any) -> None:
    """Every other generated chat request names the demo model and a user message, so that its
    other generated fields reach the generation; random model names all answer 404."""
    if (
        isinstance(case.body, dict)
        and case.meta is not None
        and case.meta.phase.name == "fuzzing"
        and sum(TALLY[case.operation.label].values()) % 2
    ):
        case.body["model"] = DEMO_MODEL
        case.body["messages"] = [{"role": "user", "content": "a red kite over the sea"}]


def send(case: Any, base_url: str, session: requests.Session, key: str | None) -> Any:
    """Send a case with this bearer key, or with none."""
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return case.call(base_url=base_url, session=session, headers=headers, timeout=30)


def assert_sound(case: Any, response: Any, key: str | None) -> None:
    """Documented, schema-conformant, not a 5xx, no traceback; errors are the OpenAI envelope."""
    repeat = case.as_curl_command(headers=dict(response.request.headers))
    assert b"Traceback" not in response.content, repeat
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/json"), repeat
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, repeat
        assert isinstance(error["message"], str) and error["message"], repeat
    needs_key = bool(case.operation.definition.raw.get("security"))
    refused = {401} if needs_key and key not in CLIENT_KEYS else set()
    if case.method == "OPTIONS":  # a CORS preflight, on any path, without a key
        assert response.status_code == 204, repeat
    elif case.method.lower() not in openapi.PATHS[case.operation.path]:
        assert response.status_code in {405, *refused}, repeat
    elif refused:
        # A body type Tornado cannot parse (multipart without a boundary) is refused first.
        sent_type = response.request.headers.get("Content-Type", "application/json")
        malformed = {400} if not sent_type.startswith("application/json") else set()
        assert response.status_code in {401, *malformed}, repeat


TOO_BIG_FOR_A_FLOAT = 10**400  # JSON can spell it out; math.isfinite() overflows on it
A_USER = [{"role": "user", "content": "a red kite over the sea"}]
# Requests the generated ones are unlikely to hit; the first three answered 500 before.
HOSTILE_BODIES = {
    "width past the float range": {"width": TOO_BIG_FOR_A_FLOAT, "height": 64},
    "cfg past the float range": {"cfg": TOO_BIG_FOR_A_FLOAT},
    "seed of 5000 digits": {"seed": "1" * 5000},
    "seed past the limit": {"seed": TOO_BIG_FOR_A_FLOAT},
    "n past the limit": {"n": TOO_BIG_FOR_A_FLOAT},
    "size of huge sides": {"size": "99999x99999", "n": 1},
}


@pytest.mark.parametrize("name", HOSTILE_BODIES)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/images/generations"])
def test_hostile_fields_are_answered_cleanly(gateway, session, path, name):
    body = {"model": DEMO_MODEL, "messages": A_USER, "prompt": "a red kite", **HOSTILE_BODIES[name]}
    case = SCHEMA[path]["POST"].Case(body=body, media_type="application/json")
    response = send(case, gateway.base_url, session, CLIENT_KEYS[0])
    assert_sound(case, response, CLIENT_KEYS[0])
    assert response.status_code == (200 if name.startswith("size") else 400)


def test_a_real_image_link_is_documented_too(gateway, session):
    """The fuzz only reaches /image-proxy with links it made up (403); here a real one."""
    made = session.post(
        gateway.base_url + "/v1/images/generations",
        json={"prompt": "a red kite", "size": "64x64", "response_format": "url"},
        headers={"Authorization": f"Bearer {CLIENT_KEYS[0]}"},
        timeout=30,
    )
    link = made.json()["data"][0]["url"]
    query = dict(item.split("=", 1) for item in link.split("?", 1)[1].split("&"))
    proxy = SCHEMA["/image-proxy"]["GET"]
    case = proxy.Case(query=query)
    image = send(case, gateway.base_url, session, None)
    assert_sound(case, image, None)
    assert image.status_code == 200
    assert image.headers["content-type"] == ["image/png"]
    etag = image.headers["etag"][0]
    case = proxy.Case(query=query, headers={"If-None-Match": etag})
    unchanged = send(case, gateway.base_url, session, None)
    assert_sound(case, unchanged, None)
    assert unchanged.status_code == 304


@SCHEMA.parametrize()
def test_fuzz(case, gateway, session, tally):
    """One request of the run: sent with a key in turn, checked for everything a user relies on."""
    label = case.operation.label
    key = next_key(label)
    if case.operation.path == "/v1/chat/completions":
        anchor_chat(case)
    response = send(case, gateway.base_url, session, key)
    tally[label][response.status_code] += 1
    assert_sound(case, response, key)
    assert "Traceback" not in new_stderr(gateway), case.as_curl_command()
