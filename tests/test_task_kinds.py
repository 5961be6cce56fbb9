"""The ``bfl``, ``replicate`` and ``fal`` kinds, driven through the gateway against their fakes.

Each kind submits a task, polls it and keeps its image at once; refusals, failures, deadlines,
throttling, expiring links and clients leaving are seen as a client would see them.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from conftest import (
    CLIENT_KEYS,
    LINK,
    LOG_WATCH,
    assert_error,
    auth,
    call,
    chat_body,
    json_of,
    post_chat,
    register_secret,
    with_env,
)
from fakes import (
    FAILED,
    MODERATED,
    NEVER,
    Answer,
    FakeBFL,
    FakeFal,
    FakeReplicate,
    FakeSet,
    FakeTaskService,
    TaskScript,
)
from pngcheck import png_info

BFL_KEYS = ("bfl-task-key-one-1a2b", "bfl-task-key-two-3c4d")
REPLICATE_KEYS = ("r8_task-key-one-5e6f", "r8_task-key-two-7a8b")
FAL_KEYS = ("fal-task-key-one:9c0d", "fal-task-key-two:1e2f")
register_secret(*BFL_KEYS, *REPLICATE_KEYS, *FAL_KEYS)

VERSION = "5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637"
TIMEOUT = 30


@dataclass(frozen=True)
class Kind:
    """One task kind under test: its group, model and fake."""

    name: str
    group: str
    model: str
    keys: tuple[str, ...]
    fake_name: str
    cancels: bool

    def fake(self, fakes: FakeSet) -> FakeTaskService:
        """This kind's fake."""
        return getattr(fakes, self.fake_name)


BFL = Kind("bfl", "IMAGE_GEN_1", "flux-pro-1.1", BFL_KEYS, "bfl", cancels=False)
REPLICATE = Kind(
    "replicate",
    "IMAGE_GEN_2",
    "black-forest-labs/flux-schnell",
    REPLICATE_KEYS,
    "replicate",
    cancels=True,
)
FAL = Kind("fal", "IMAGE_GEN_3", "fal-ai/flux/dev", FAL_KEYS, "fal", cancels=True)
KINDS = [BFL, REPLICATE, FAL]
BY_NAME = pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])


@pytest.fixture
def fakes(io_loop):
    """The three task APIs on one image host."""
    started = FakeSet(bfl=FakeBFL, replicate=FakeReplicate, fal=FakeFal)
    yield started
    started.close()


@pytest.fixture
def gateway_env(fakes, request):
    """One group per kind, each pointed at its fake, two keys each."""
    env = {
        "IMAGE_GEN_KIND_1": "bfl",
        "IMAGE_GEN_MODEL_1": "flux-pro-1.1,flux-kontext-pro",
        "IMAGE_GEN_API_BASE_1": fakes.bfl.url("v1"),
        "IMAGE_GEN_API_KEY_1": ",".join(BFL_KEYS),
        "IMAGE_GEN_KIND_2": "replicate",
        "IMAGE_GEN_MODEL_2": f"black-forest-labs/flux-schnell,{VERSION}",
        "IMAGE_GEN_API_BASE_2": fakes.replicate.url("v1"),
        "IMAGE_GEN_API_KEY_2": ",".join(REPLICATE_KEYS),
        "IMAGE_GEN_EXTRA_2": '{"go_fast": true, "prompt": "never this"}',
        "IMAGE_GEN_KIND_3": "fal",
        "IMAGE_GEN_MODEL_3": "fal-ai/flux/dev",
        "IMAGE_GEN_API_BASE_3": fakes.fal.url(""),
        "IMAGE_GEN_API_KEY_3": ",".join(FAL_KEYS),
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
        "IMAGE_GEN_TIMEOUT": "20",
        "SSE_KEEPALIVE_SECONDS": "0.05",
    }
    env.update(getattr(request, "param", {}))
    return env


async def image_of(http_client, response) -> dict[str, int]:
    """The PNG behind the gateway link of a chat answer."""
    assert response.code == 200, response.body
    content = json_of(response)["choices"][0]["message"]["content"]
    image = await http_client.fetch(LINK.search(content).group(1))
    return png_info(image.body)


def leave_no_trace(kind: Kind, fakes: FakeSet) -> None:
    """No key reached a request it did not belong to, and no poll went anywhere but the fake."""
    fake = kind.fake(fakes)
    assert {r.key for r in fake.requests} <= set(kind.keys)


# --- success, through chat completions, the Images API and the SDK ---------------------------


@pytest.mark.gen_test(timeout=TIMEOUT)
@BY_NAME
async def test_a_task_is_polled_until_done_and_its_image_kept(http_client, base_url, fakes, kind):
    fake = kind.fake(fakes)
    fake.next_tasks(TaskScript(pending=2))
    response = await post_chat(http_client, base_url, chat_body("a fox in snow, 16:9", kind.model))
    info = await image_of(http_client, response)
    assert info["width"] > 0
    task = fake.only_task()
    assert task.polls == 3  # two "still running", then done
    polls = fake.polls()
    assert {r.key for r in polls} == {task.key}  # polled with the key that submitted
    leave_no_trace(kind, fakes)


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_bfl_request_shape(http_client, base_url, fakes):
    fakes.bfl.next_tasks(TaskScript(pending=0), TaskScript(pending=0))
    await post_chat(http_client, base_url, chat_body("a fox, 16:9", "flux-pro-1.1", seed=7))
    await post_chat(http_client, base_url, chat_body("a fox, 16:9", "flux-kontext-pro"))
    sized, kontext = fakes.bfl.submissions()
    assert sized.path == "/v1/flux-pro-1.1" and sized.headers["x-key"] in BFL_KEYS
    assert "authorization" not in sized.headers
    assert sized.json == {
        "prompt": "a fox",
        "seed": 7,
        "output_format": "png",
        "width": 1024,
        "height": 576,
    }
    assert kontext.path == "/v1/flux-kontext-pro"
    assert kontext.json["aspect_ratio"] == "16:9" and "width" not in kontext.json
    assert [r.path for r in fakes.bfl.polls()] == ["/v1/get_result"] * 2


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_replicate_request_shape_extra_inputs_and_a_version_id(http_client, base_url, fakes):
    fakes.replicate.next_tasks(TaskScript(pending=0), TaskScript(pending=0))
    body = chat_body("a fox, 9:16", "black-forest-labs/flux-schnell", seed=3)
    assert (await post_chat(http_client, base_url, body)).code == 200
    assert (await post_chat(http_client, base_url, chat_body("a fox", VERSION))).code == 200
    by_name, by_version = fakes.replicate.submissions()
    assert by_name.path == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert by_name.headers["prefer"].startswith("wait=")
    assert by_name.headers["cancel-after"] == "20s"
    # The group's extra inputs join the model's input; they never replace the gateway's own.
    assert by_name.json == {
        "input": {"prompt": "a fox", "aspect_ratio": "9:16", "seed": 3, "go_fast": True}
    }
    assert by_version.path == "/v1/predictions"
    assert by_version.json["version"] == VERSION
    assert by_version.json["input"]["aspect_ratio"] == "1:1"
    # Prefer: wait saw both through: no poll was needed.
    assert fakes.replicate.polls() == []


@pytest.mark.gen_test(timeout=TIMEOUT)
@with_env({"IMAGE_GEN_MODEL_2": "black-forest-labs/flux-1.1-pro,black-forest-labs/flux-schnell"})
async def test_replicate_flux_11_pro_is_sent_only_aspect_ratios_its_schema_takes(
    http_client, base_url, fakes
):
    # FLUX 1.1 [pro] on Replicate has no 21:9 or 9:21: the nearest ratio it takes is sent.
    fakes.replicate.next_tasks(*[TaskScript(pending=0)] * 3)
    for prompt, model in [
        ("a harbour, 21:9", "black-forest-labs/flux-1.1-pro"),
        ("a tower, 9:21", "black-forest-labs/flux-1.1-pro"),
        ("a harbour, 21:9", "black-forest-labs/flux-schnell"),
    ]:
        response = await post_chat(http_client, base_url, chat_body(prompt, model))
        assert (await image_of(http_client, response))["width"] > 0
    wide, tall, schnell = fakes.replicate.submissions()
    assert wide.path == "/v1/models/black-forest-labs/flux-1.1-pro/predictions"
    assert (wide.json["input"]["aspect_ratio"], tall.json["input"]["aspect_ratio"]) == (
        "16:9",
        "9:16",
    )
    assert schnell.json["input"]["aspect_ratio"] == "21:9"


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_replicate_output_of_one_url_is_read_too(http_client, base_url, fakes):
    fakes.replicate.single_output = True
    fakes.replicate.next_tasks(TaskScript(pending=0))
    response = await post_chat(http_client, base_url, chat_body("a fox", REPLICATE.model))
    assert (await image_of(http_client, response))["width"] > 0


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_fal_request_shape(http_client, base_url, fakes):
    fakes.fal.next_tasks(TaskScript(pending=0))
    body = chat_body("a fox, 16:9", FAL.model, seed=5, negative_prompt="blur")
    assert (await post_chat(http_client, base_url, body)).code == 200
    (submission,) = fakes.fal.submissions()
    assert submission.path == "/fal-ai/flux/dev"
    assert submission.headers["authorization"].startswith("Key ")
    assert submission.json == {
        "prompt": "a fox",
        "image_size": "landscape_16_9",
        "seed": 5,
        "negative_prompt": "blur",
    }
    task = fakes.fal.only_task()
    # Status and result live on the app's path, without the subpath.
    assert [(r.method, r.path) for r in fakes.fal.polls()] == [
        ("GET", f"/fal-ai/flux/requests/{task.id}/status"),
        ("GET", f"/fal-ai/flux/requests/{task.id}"),
    ]


@pytest.mark.gen_test(timeout=TIMEOUT)
@BY_NAME
async def test_the_images_api_answers_base64(http_client, base_url, fakes, kind):
    kind.fake(fakes).next_tasks(TaskScript(pending=1), TaskScript(pending=1))
    response = await call(
        http_client,
        base_url,
        "/v1/images/generations",
        "POST",
        {"model": kind.model, "prompt": "a lamp", "n": 2, "response_format": "b64_json"},
    )
    assert response.code == 200, response.body
    data = json_of(response)["data"]
    assert len(data) == 2  # one task an image
    for item in data:
        png_info(base64.b64decode(item["b64_json"]))
    assert len(kind.fake(fakes).tasks) == 2


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_the_openai_sdk_gets_images_and_chat_answers(base_url, http_client, fakes):
    fakes.fal.next_tasks(TaskScript(pending=1, queued=1))
    fakes.replicate.next_tasks(TaskScript(pending=1))
    async with openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key=CLIENT_KEYS[0], max_retries=0, timeout=TIMEOUT
    ) as client:
        images = await client.images.generate(model=FAL.model, prompt="a lamp, 9:16")
        completion = await client.chat.completions.create(
            model=REPLICATE.model, messages=[{"role": "user", "content": "a kite"}]
        )
        fakes.bfl.next_tasks(TaskScript(pending=0, outcome=MODERATED))
        with pytest.raises(openai.BadRequestError) as refused:
            await client.images.generate(model=BFL.model, prompt="a lamp")
    png_info(base64.b64decode(images.data[0].b64_json))
    assert fakes.fal.only_task().body["image_size"] == "portrait_16_9"
    link = LINK.search(completion.choices[0].message.content).group(1)
    png_info((await http_client.fetch(link)).body)
    assert refused.value.body["code"] == "upstream_rejected"


# --- progress while streaming ---------------------------------------------------------------


async def streamed(http_client, base_url, body: dict[str, Any]) -> list[Any]:
    """The decoded ``data:`` payloads of a streamed chat completion."""
    chunks: list[bytes] = []
    response = await http_client.fetch(
        base_url + "/v1/chat/completions",
        method="POST",
        body=json.dumps({**body, "stream": True}),
        headers={**auth(), "Content-Type": "application/json"},
        streaming_callback=chunks.append,
        request_timeout=TIMEOUT,
    )
    assert response.code == 200
    payloads = []
    for block in b"".join(chunks).decode().split("\n\n"):
        if block.startswith("data: ") and block != "data: [DONE]":
            payloads.append(json.loads(block[len("data: ") :]))
    return payloads


def reasoning_of(payloads: list[Any]) -> list[str]:
    """The ``reasoning_content`` deltas, in order."""
    return [
        choice["delta"]["reasoning_content"]
        for payload in payloads
        for choice in payload.get("choices", [])
        if choice.get("delta", {}).get("reasoning_content")
    ]


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_fal_queue_position_and_percent_stream_as_reasoning_a_line_per_change(
    http_client, base_url, fakes
):
    fakes.fal.next_tasks(TaskScript(pending=2, queued=1))
    # A poll that says the same as the one before it adds no line.
    fakes.fal.script_polls(Answer(202, {"status": "IN_QUEUE", "queue_position": 1}))
    payloads = await streamed(http_client, base_url, chat_body("a fox", FAL.model))
    assert reasoning_of(payloads) == [
        "queued: position 1\n",
        "queued: position 0\n",
        "running: 67%\n",
    ]
    content = "".join(c["delta"].get("content") or "" for p in payloads for c in p["choices"])
    assert LINK.search(content)


@pytest.mark.gen_test(timeout=TIMEOUT)
@pytest.mark.parametrize(
    ("kind", "lines"),
    [
        (BFL, ["queued\n", "running: 33%\n", "running: 67%\n"]),
        (REPLICATE, ["queued\n", "running: 33%\n", "running: 67%\n"]),
    ],
    ids=["bfl", "replicate"],
)
async def test_percent_streams_as_reasoning(http_client, base_url, fakes, kind, lines):
    kind.fake(fakes).next_tasks(TaskScript(pending=2))
    payloads = await streamed(http_client, base_url, chat_body("a fox", kind.model))
    assert reasoning_of(payloads) == lines


@pytest.mark.gen_test(timeout=TIMEOUT)
@with_env({"STREAM_REASONING": "false"})
async def test_no_progress_lines_when_stream_reasoning_is_off(http_client, base_url, fakes):
    fakes.fal.next_tasks(TaskScript(pending=2, queued=1))
    payloads = await streamed(http_client, base_url, chat_body("a fox", FAL.model))
    assert reasoning_of(payloads) == []
    assert fakes.fal.only_task().polls == 3


# --- refusals, failures, deadlines ----------------------------------------------------------


REFUSALS = {
    "bfl": "Derivative Works Filter",
    "replicate": "NSFW content detected",
    "fal": "safety checker flagged",
}


@pytest.mark.gen_test(timeout=TIMEOUT)
@BY_NAME
async def test_a_moderated_task_is_400_upstream_rejected_and_blames_no_key(
    http_client, base_url, fakes, app, kind
):
    kind.fake(fakes).next_tasks(TaskScript(pending=1, outcome=MODERATED))
    response = await post_chat(http_client, base_url, chat_body("a fox", kind.model))
    error = assert_error(response, 400, "upstream_rejected")
    assert REFUSALS[kind.name] in error["message"]
    assert app.services.generation.providers[kind.group].keys.resting() == 0
    assert len(kind.fake(fakes).submissions()) == 1  # no other key was tried


@pytest.mark.gen_test(timeout=TIMEOUT)
@BY_NAME
async def test_a_failed_task_is_502_with_the_providers_reason(http_client, base_url, fakes, kind):
    reason = "CUDA error: out of memory on worker"
    kind.fake(fakes).next_tasks(TaskScript(pending=1, outcome=FAILED, reason=reason))
    response = await post_chat(http_client, base_url, chat_body("a fox", kind.model))
    error = assert_error(response, 502, "upstream_error")
    assert reason in error["message"] and kind.group in error["message"]
    for key in kind.keys:
        assert key not in error["message"]


@pytest.mark.gen_test(timeout=TIMEOUT)
@with_env({"IMAGE_GEN_TIMEOUT": "1.5"})
@BY_NAME
async def test_a_task_that_never_finishes_is_504_at_the_deadline_and_cancelled(
    http_client, base_url, fakes, kind
):
    fake = kind.fake(fakes)
    fake.next_tasks(TaskScript(outcome=NEVER))
    response = await post_chat(http_client, base_url, chat_body("a fox", kind.model))
    assert_error(response, 504, "upstream_timeout")
    task = fake.only_task()
    if kind.cancels:
        await wait_for_cancel(fake, task.id)
    else:
        assert fake.cancels == []


async def wait_for_cancel(fake: FakeTaskService, task_id: str) -> None:
    """Wait until the fake has been asked to cancel ``task_id``."""
    async with asyncio.timeout(10):
        while task_id not in fake.cancels:
            await fake.wait_requests(len(fake.requests) + 1)
    assert fake.cancels == [task_id]
    (cancel,) = [r for r in fake.requests if fake.route_of(r)[0] == "cancel"]
    assert cancel.key == fake.tasks[task_id].key


# --- throttling and key failover ------------------------------------------------------------


@pytest.mark.gen_test(timeout=TIMEOUT)
@BY_NAME
async def test_a_throttled_submission_fails_over_and_a_throttled_poll_waits(
    http_client, base_url, fakes, app, kind
):
    fake = kind.fake(fakes)
    fake.script(Answer(429, fake.error_json(429, "slow down"), headers={"Retry-After": "30"}))
    fake.script_polls(Answer(429, fake.error_json(429, "slow down"), headers={"Retry-After": "1"}))
    fake.next_tasks(TaskScript(pending=1))
    response = await post_chat(http_client, base_url, chat_body("a fox", kind.model))
    assert (await image_of(http_client, response))["width"] > 0
    first, second = fake.submissions()
    assert first.key != second.key  # the throttled key was left for the other
    task = fake.only_task()
    assert task.key == second.key
    # The throttled poll was asked again, with the key that submitted: the task went on.
    assert len(fake.polls()) >= 3 and {r.key for r in fake.polls()} == {second.key}
    assert app.services.generation.providers[kind.group].keys.resting() == 1


# --- links that expire ----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=TIMEOUT)
@BY_NAME
async def test_an_image_whose_link_expires_after_the_task_is_still_served(
    http_client, base_url, fakes, kind
):
    fake = kind.fake(fakes)
    fake.next_tasks(TaskScript(pending=1, expires=True))
    response = await post_chat(http_client, base_url, chat_body("a fox", kind.model))
    content = json_of(response)["choices"][0]["message"]["content"]
    (upstream_link,) = fake.only_task().image_urls
    expired = await http_client.fetch(upstream_link, raise_error=False)
    assert expired.code == 403  # the provider's link is gone...
    for _ in range(2):  # ...the gateway's copy is not
        kept = await http_client.fetch(LINK.search(content).group(1))
        png_info(kept.body)


# --- a client leaving -----------------------------------------------------------------------


async def raw_chat(port: int, body: dict) -> asyncio.StreamWriter:
    """Send a chat completion on a connection of its own, without reading the answer."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
        + f"Authorization: Bearer {CLIENT_KEYS[0]}\r\n".encode()
        + b"Content-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    return writer


@pytest.mark.gen_test(timeout=TIMEOUT)
@BY_NAME
async def test_a_client_leaving_stops_the_polling_and_cancels_the_task(
    base_url, http_port, fakes, kind
):
    fake = kind.fake(fakes)
    fake.next_tasks(TaskScript(outcome=NEVER))
    before = len(LOG_WATCH.lines)
    writer = await raw_chat(http_port, chat_body("a fox", kind.model))
    await fake.wait_requests(3, within=10)  # submitted, and polled twice
    writer.close()
    await LOG_WATCH.wait_for("abandoned", since=before)
    task = fake.only_task()
    if kind.cancels:
        await wait_for_cancel(fake, task.id)
    polls = len(fake.polls())
    # Longer than the next few poll intervals: none comes.
    await asyncio.sleep(2)
    assert len(fake.polls()) == polls
    if not kind.cancels:
        assert fake.cancels == []


# --- links the key must not follow ----------------------------------------------------------


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_polling_url_on_another_host_is_not_given_the_key(http_client, base_url, fakes):
    fakes.bfl.polling_host = "localhost"
    fakes.bfl.next_tasks(TaskScript(pending=1))
    response = await post_chat(http_client, base_url, chat_body("a fox", BFL.model))
    assert response.code == 200
    # Polled at the configured host, built from the task id.
    hosts = {r.headers["host"] for r in fakes.bfl.polls()}
    assert hosts == {f"127.0.0.1:{fakes.bfl.port}"}
