"""Asynchronous task APIs (ModelScope, DashScope) through the gateway: submit, poll, cancel."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket

import openai
import pytest
from conftest import (
    CLIENT_KEYS,
    assert_error,
    call,
    chat_body,
    json_of,
    post_chat,
    register_secret,
    with_env,
)
from fakes import Answer, FakeDashScope, FakeModelScope, FakeOrigin, FakeTaskApi
from pngcheck import png_info
from test_streaming import Received, data_of, start_stream
from tornado.iostream import IOStream

MS_KEY = "ms-task-key-0a1b2c3d4e5f"
DS_KEY = "sk-dashscope-task-key-9f8e7d6c"
register_secret(MS_KEY, DS_KEY)
MS_MODEL = "Tongyi-MAI/Z-Image-Turbo"
DS_MODEL = "wan2.2-t2i-flash"
DS_ONE_IMAGE_MODEL = "qwen-image-plus"  # one image a task: n images take n tasks
TIMEOUT = 20.0
MODELS = {"modelscope": MS_MODEL, "dashscope": DS_MODEL}
KINDS = list(MODELS)


@pytest.fixture
def images(io_loop):
    """The host of the fakes' result images."""
    host = FakeOrigin()
    yield host
    host.close()


@pytest.fixture
def modelscope(images):
    fake = FakeModelScope(images)
    yield fake
    fake.close()


@pytest.fixture
def dashscope(images):
    fake = FakeDashScope(images)
    yield fake
    fake.close()


@pytest.fixture
def fakes(modelscope, dashscope) -> dict[str, FakeTaskApi]:
    return {"modelscope": modelscope, "dashscope": dashscope}


@pytest.fixture
def gateway_env(modelscope, dashscope, request):
    env = {
        "IMAGE_GEN_MODEL_1": MS_MODEL,
        "IMAGE_GEN_API_KEY_1": MS_KEY,
        "IMAGE_GEN_KIND_1": "modelscope",
        "IMAGE_GEN_API_BASE_1": modelscope.base(),
        "IMAGE_GEN_MODEL_2": f"{DS_MODEL},{DS_ONE_IMAGE_MODEL}",
        "IMAGE_GEN_API_KEY_2": DS_KEY,
        "IMAGE_GEN_KIND_2": "dashscope",
        "IMAGE_GEN_API_BASE_2": dashscope.base(),
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
        "SSE_KEEPALIVE_SECONDS": "0.05",
        "STREAM_REASONING": "true",
        "IMAGE_GEN_TIMEOUT": "30",
    }
    env.update(getattr(request, "param", {}))
    return env


def links_of(content: str) -> list[str]:
    """The image links of a chat answer's markdown."""
    return re.findall(r"!\[[^\]]*\]\((\S+)\)", content)


async def cancelled(fake: FakeTaskApi) -> None:
    """Wait until the fake has received a cancel call (a guard against hanging, not a timing)."""
    async with asyncio.timeout(TIMEOUT):
        while not fake.cancels:
            await fake.wait_requests(len(fake.requests) + 1, within=TIMEOUT)


async def assert_png(http_client, link: str) -> dict:
    """The gateway's link serves a PNG; its size."""
    image = await http_client.fetch(link)
    assert image.headers["Content-Type"] == "image/png"
    return png_info(image.body)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_task_is_submitted_polled_until_done_and_its_image_kept(
    http_client, base_url, fakes, kind
):
    fake = fakes[kind]
    fake.plan = ["pending", "pending", "running", "done"]
    response = await post_chat(http_client, base_url, chat_body("a red kite, 16:9", MODELS[kind]))

    assert response.code == 200, response.body
    content = json_of(response)["choices"][0]["message"]["content"]
    [link] = links_of(content)
    info = await assert_png(http_client, link)
    assert info["width"] > 0
    submission = fake.requests[0]
    assert submission.method == "POST" and submission.key in (MS_KEY, DS_KEY)
    [task_id] = fake.tasks
    polls = fake.polls_of(task_id)
    assert len(polls) == 4  # pending, pending, running, done: no poll after the task ended
    assert {poll.key for poll in polls} == {submission.key}  # polled with the key that submitted
    if kind == "modelscope":
        assert submission.headers["x-modelscope-async-mode"] == "true"
        assert submission.json["size"] == "1024x576" and submission.json["model"] == MS_MODEL
        assert all(p.headers["x-modelscope-task-type"] == "image_generation" for p in polls)
    else:
        assert submission.headers["x-dashscope-async"] == "enable"
        assert submission.json["parameters"]["size"] == "1024*576"
        assert submission.json["input"]["prompt"] == "a red kite"
    assert not fake.cancels


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_streaming_client_sees_a_progress_line_per_change_not_per_poll(
    http_client, base_url, fakes, kind
):
    fake = fakes[kind]
    fake.plan = ["pending", "pending", "running", "running", "done"]
    received = Received()
    body = chat_body("a lantern", MODELS[kind], stream=True)
    response = await start_stream(http_client, base_url, body, received, [])

    assert response.code == 200
    chunks = [c for c in data_of(b"".join(received))[:-1] if c["choices"]]
    reasoning = [
        c["choices"][0]["delta"]["reasoning_content"]
        for c in chunks
        if "reasoning_content" in c["choices"][0]["delta"]
    ]
    assert reasoning == ["queued\n", "running\n"]
    [task_id] = fake.tasks
    assert len(fake.polls_of(task_id)) == 5
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert len(links_of(content)) == 1


@pytest.mark.gen_test(timeout=30)
@with_env({"SSE_KEEPALIVE_SECONDS": "60"})
async def test_progress_reaches_the_stream_while_the_task_still_runs(http_client, base_url, fakes):
    """A progress line is sent as it is known, not held until the image is made (nor until the
    next keep-alive, here later than the whole task)."""
    fake = fakes["dashscope"]
    fake.plan = ["running", "running", "running", "running", "done"]
    received = Received()
    answer = start_stream(
        http_client,
        base_url,
        chat_body("a lantern", MODELS["dashscope"], stream=True),
        received,
        [],
    )
    await received.until(lambda data: b"running" in data, "a progress line")

    [task_id] = fake.tasks
    assert len(fake.polls_of(task_id)) < len(fake.plan)  # the task has not ended yet
    assert b"image-proxy" not in b"".join(received)
    response = await answer
    assert response.code == 200
    assert len(links_of(b"".join(received).decode())) == 1


@pytest.mark.gen_test(timeout=30)
@with_env({"STREAM_REASONING": "false"})
async def test_without_stream_reasoning_no_progress_is_streamed(http_client, base_url, dashscope):
    received = Received()
    body = chat_body("a lantern", DS_MODEL, stream=True)
    response = await start_stream(http_client, base_url, body, received, [])

    assert response.code == 200
    assert b"reasoning_content" not in b"".join(received)


@pytest.mark.gen_test(timeout=30)
async def test_the_images_api_gets_several_images_from_one_dashscope_task(
    http_client, base_url, dashscope
):
    dashscope.plan = ["pending", "done"]
    response = await call(
        http_client,
        base_url,
        "/v1/images/generations",
        method="POST",
        body={
            "model": DS_MODEL,
            "prompt": "three pears",
            "n": 3,
            "size": "1024x1024",
            "response_format": "url",
        },
    )

    assert response.code == 200, response.body
    data = json_of(response)["data"]
    assert len(data) == 3
    for item in data:
        await assert_png(http_client, item["url"])
    [submission] = [r for r in dashscope.requests if r.method == "POST"]
    assert submission.json["parameters"]["n"] == 3  # one task, not three


@pytest.mark.gen_test(timeout=30)
async def test_when_one_of_several_tasks_fails_the_others_are_cancelled(
    http_client, base_url, dashscope
):
    dashscope.next_plans = [["pending", "failed"], ["pending"]]
    response = await call(
        http_client,
        base_url,
        "/v1/images/generations",
        method="POST",
        body={"model": DS_ONE_IMAGE_MODEL, "prompt": "two pears", "n": 2},
    )

    assert_error(response, 502, "upstream_error")
    assert len(dashscope.tasks) == 2
    await cancelled(dashscope)
    [failed] = [task for task, steps in dashscope.tasks.items() if steps[0] == "failed"]
    [unfinished] = [task for task in dashscope.tasks if task != failed]
    assert dashscope.cancels == [unfinished]
    assert dashscope.task_bodies[unfinished]["parameters"]["size"] == "1328*1328"


@pytest.mark.gen_test(timeout=30)
async def test_the_openai_sdk_gets_a_modelscope_image(base_url, http_client, modelscope):
    modelscope.plan = ["pending", "running", "done"]
    client = openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key=CLIENT_KEYS[0], max_retries=0, timeout=30
    )
    async with client:
        completion = await client.chat.completions.create(
            model=MS_MODEL, messages=[{"role": "user", "content": "a fox, 9:16"}]
        )
        images = await client.images.generate(model=MS_MODEL, prompt="an owl", size="1024x1024")
    [link] = links_of(completion.choices[0].message.content)
    info = await assert_png(http_client, link)
    assert info["width"] > 0
    assert png_info(base64.b64decode(images.data[0].b64_json))["width"] > 0
    sizes = [r.json["size"] for r in modelscope.requests if r.method == "POST"]
    assert sizes == ["576x1024", "1024x1024"]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_failed_task_is_a_502_with_the_providers_reason(
    http_client, base_url, fakes, app, kind
):
    fake = fakes[kind]
    fake.plan = ["pending", "failed"]
    response = await post_chat(http_client, base_url, chat_body("a cat", MODELS[kind]))

    error = assert_error(response, 502, "upstream_error")
    assert fake.reason in error["message"]
    assert MS_KEY not in error["message"] and DS_KEY not in error["message"]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_moderation_refusal_is_a_400_that_blames_no_key(
    http_client, base_url, fakes, app, kind
):
    fake = fakes[kind]
    fake.plan = ["running", "refused"]
    response = await post_chat(http_client, base_url, chat_body("a cat", MODELS[kind]))

    error = assert_error(response, 400, "upstream_rejected")
    assert fake.refusal in error["message"]
    group = "IMAGE_GEN_1" if kind == "modelscope" else "IMAGE_GEN_2"
    assert app.services.generation.providers[group].keys.resting() == 0


@pytest.mark.gen_test(timeout=30)
@with_env({"IMAGE_GEN_TIMEOUT": "2"})
@pytest.mark.parametrize("kind", KINDS)
async def test_a_task_that_never_finishes_is_a_504_and_is_cancelled_where_possible(
    http_client, base_url, fakes, kind
):
    fake = fakes[kind]
    fake.plan = ["pending"]
    response = await post_chat(http_client, base_url, chat_body("a cat", MODELS[kind]))

    assert_error(response, 504, "upstream_timeout")
    [task_id] = fake.tasks
    assert len(fake.polls_of(task_id)) >= 2
    if kind == "dashscope":
        await cancelled(fake)
        assert fake.cancels == [task_id]
        cancel = fake.requests[-1]
        assert cancel.key == DS_KEY and cancel.path.endswith(f"/tasks/{task_id}/cancel")


@pytest.mark.gen_test(timeout=30)
async def test_a_task_given_up_on_a_refused_poll_is_cancelled_upstream(
    http_client, base_url, fakes
):
    fake = fakes["dashscope"]
    fake.plan = ["pending", Answer(404, fake.error_json(404, "no such task here"))]
    response = await post_chat(http_client, base_url, chat_body("a cat", MODELS["dashscope"]))

    assert "polling the task failed" in assert_error(response, 502, "upstream_error")["message"]
    [task_id] = fake.tasks
    await cancelled(fake)
    assert fake.cancels == [task_id]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_throttled_or_failing_poll_waits_and_asks_again(
    http_client, base_url, fakes, app, kind
):
    fake = fakes[kind]
    throttled = Answer(429, fake.error_json(429, "too many requests"), headers={"Retry-After": "1"})
    broken = Answer(503, fake.error_json(503, "busy"))
    fake.plan = ["pending", throttled, broken, "running", "done"]
    response = await post_chat(http_client, base_url, chat_body("a cat", MODELS[kind]))

    assert response.code == 200, response.body
    [task_id] = fake.tasks
    assert len(fake.polls_of(task_id)) == 5
    group = "IMAGE_GEN_1" if kind == "modelscope" else "IMAGE_GEN_2"
    assert app.services.generation.providers[group].keys.resting() == 0


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_result_link_that_expires_right_after_the_task_is_already_kept(
    http_client, base_url, fakes, images, kind
):
    fake = fakes[kind]
    fake.plan = ["pending", "done"]
    fake.expire_results = True
    response = await post_chat(http_client, base_url, chat_body("a cat", MODELS[kind]))

    assert response.code == 200, response.body
    [provider_url] = fake.image_urls
    expired = await http_client.fetch(provider_url, raise_error=False)
    assert expired.code == 403  # the provider's link is gone...
    [link] = links_of(json_of(response)["choices"][0]["message"]["content"])
    await assert_png(http_client, link)  # ...the gateway's copy is not


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_client_that_leaves_stops_the_polling_and_cancels_the_task(
    http_client, base_url, http_port, fakes, kind
):
    fake = fakes[kind]
    fake.plan = ["pending"]
    stream = IOStream(socket.socket())
    await stream.connect(("127.0.0.1", http_port))
    body = json.dumps(chat_body("a cat", MODELS[kind], stream=True)).encode()
    await stream.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + CLIENT_KEYS[0].encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await stream.read_until(b"\r\n\r\n")
    await fake.wait_requests(3, within=TIMEOUT)  # the submission and two polls
    stream.close()
    [task_id] = fake.tasks
    if kind == "dashscope":
        await cancelled(fake)
        assert fake.cancels == [task_id]
    polls = len(fake.polls)
    # Longer than the longest wait between two polls so far: a poll would have come by now.
    await asyncio.sleep(3)
    assert len(fake.polls) == polls
    health = await http_client.fetch(base_url + "/health")
    assert health.code == 200


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "gateway_env",
    [
        {
            "IMAGE_GEN_EXTRA_1": '{"steps": 9, "size": "64x64", "loras": {"a/b": 1.0}}',
            "IMAGE_GEN_EXTRA_2": '{"watermark": false, "n": 4, "prompt_extend": true}',
        }
    ],
    indirect=True,
    ids=["extra"],
)
async def test_extra_fields_join_the_request_without_replacing_the_gateways(
    http_client, base_url, modelscope, dashscope
):
    modelscope.plan = dashscope.plan = ["done"]
    for model in (MS_MODEL, DS_MODEL):
        response = await post_chat(http_client, base_url, chat_body("a cat", model))
        assert response.code == 200, response.body

    ms_body = modelscope.requests[0].json
    assert ms_body["steps"] == 9 and ms_body["loras"] == {"a/b": 1.0}
    assert ms_body["size"] == "1024x1024"  # the client's size, not the extra one
    ds_parameters = dashscope.requests[0].json["parameters"]
    assert ds_parameters["watermark"] is False and ds_parameters["prompt_extend"] is True
    assert ds_parameters["n"] == 1


WAN26 = "wan2.6-t2i"


@pytest.mark.gen_test(timeout=30)
@with_env({"IMAGE_GEN_MODEL_2": f"{DS_MODEL},{WAN26}"})
async def test_wan26_is_a_task_in_the_messages_format_on_the_image_generation_endpoint(
    http_client, base_url, dashscope
):
    dashscope.plan = ["pending", "running", "done"]
    body = chat_body("a red kite, 16:9", WAN26)
    body["negative_prompt"] = "clouds"
    response = await post_chat(http_client, base_url, body)

    assert response.code == 200, response.body
    [link] = links_of(json_of(response)["choices"][0]["message"]["content"])
    [submission] = [r for r in dashscope.requests if r.method == "POST"]
    # Not the text-to-image endpoint, which refuses the Wan 2.6 models.
    assert submission.path == "/api/v1/services/aigc/image-generation/generation"
    assert submission.headers["x-dashscope-async"] == "enable"
    assert submission.json["input"] == {
        "messages": [{"role": "user", "content": [{"text": "a red kite"}]}]
    }
    parameters = submission.json["parameters"]
    width, height = (int(side) for side in parameters["size"].split("*"))
    # 16:9, within Wan 2.6's 1280*1280..1440*1440 pixels.
    assert 1280 * 1280 <= width * height <= 1440 * 1440
    assert abs(width / height - 16 / 9) < 0.02
    assert (parameters["n"], parameters["negative_prompt"]) == (1, "clouds")
    # Polled until done; the image of its chat-format answer is kept and served.
    [task_id] = dashscope.tasks
    assert len(dashscope.polls_of(task_id)) == 3
    kept = await http_client.fetch(link)
    [made] = dashscope.image_urls
    assert kept.body == (await http_client.fetch(made)).body


@pytest.mark.gen_test(timeout=30)
@with_env({"IMAGE_GEN_MODEL_2": f"{DS_MODEL},{WAN26}"})
async def test_the_images_api_gets_several_wan26_images_from_one_task(
    http_client, base_url, dashscope
):
    dashscope.plan = ["done"]
    response = await call(
        http_client,
        base_url,
        "/v1/images/generations",
        method="POST",
        body={"model": WAN26, "prompt": "two pears", "n": 2, "seed": 2**40 + 5},
    )

    assert response.code == 200, response.body
    data = json_of(response)["data"]
    assert len(data) == 2
    assert all(base64.b64decode(item["b64_json"])[:4] == b"\x89PNG" for item in data)
    [submission] = [r for r in dashscope.requests if r.method == "POST"]
    assert submission.json["parameters"]["n"] == 2  # one task, not two
    assert submission.json["parameters"]["seed"] == 5  # within DashScope's 0..2147483647


@pytest.mark.gen_test(timeout=30)
@with_env({"IMAGE_GEN_MODEL_2": f"{DS_MODEL},qwen-image-max,qwen-image-2.0-pro"})
async def test_qwen_image_models_other_than_the_two_task_models_are_called_synchronously(
    http_client, base_url, dashscope
):
    # qwen-image-max makes one image a call, in one of its five sizes: n=2 takes two calls.
    response = await call(
        http_client,
        base_url,
        "/v1/images/generations",
        method="POST",
        body={"model": "qwen-image-max", "prompt": "two pears", "n": 2, "size": "1792x1024"},
    )
    assert response.code == 200, response.body
    assert len(json_of(response)["data"]) == 2
    first, second = dashscope.sync_calls
    for sent in (first, second):
        assert sent.path == "/api/v1/services/aigc/multimodal-generation/generation"
        assert "x-dashscope-async" not in sent.headers
        assert sent.json["input"]["messages"] == [
            {"role": "user", "content": [{"text": "two pears"}]}
        ]
        assert (sent.json["parameters"]["n"], sent.json["parameters"]["size"]) == (1, "1664*928")
    # The 2.0 series makes several in one call, at any size within its pixel limits.
    body = chat_body("a lighthouse, 3:2", "qwen-image-2.0-pro")
    response = await post_chat(http_client, base_url, body)
    assert response.code == 200, response.body
    [link] = links_of(json_of(response)["choices"][0]["message"]["content"])
    sent = dashscope.sync_calls[-1]
    assert sent.json["input"]["messages"][0]["content"] == [{"text": "a lighthouse"}]
    width, height = (int(side) for side in sent.json["parameters"]["size"].split("*"))
    assert abs(width / height - 3 / 2) < 0.02
    await assert_png(http_client, link)
    # No task at all: each answer came at once.
    assert dashscope.tasks == {} and dashscope.polls == []
