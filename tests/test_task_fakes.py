"""Self-test of the task-API fakes (BFL, Replicate, fal, DashScope's edits): each speaks its
documented shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import register_secret
from fakes import (
    FAILED,
    MODERATED,
    NEVER,
    Answer,
    FakeBFL,
    FakeDashScope,
    FakeFal,
    FakeOrigin,
    FakeReplicate,
    TaskScript,
    data_uri,
    jpeg_bytes,
)
from pngcheck import png_info
from tornado.httpclient import AsyncHTTPClient, HTTPResponse


@pytest.fixture
def client(io_loop):
    """The (curl) async HTTP client of this test's loop."""
    http = AsyncHTTPClient()
    yield http
    http.close()


@pytest.fixture
def image_host(io_loop):
    """The image host the fakes put their images on."""
    host = FakeOrigin()
    yield host
    host.close()


@pytest.fixture
def bfl(io_loop, image_host):
    """A fake BFL API."""
    fake = FakeBFL(image_host)
    yield fake
    fake.close()


@pytest.fixture
def replicate(io_loop, image_host):
    """A fake Replicate."""
    fake = FakeReplicate(image_host)
    yield fake
    fake.close()


@pytest.fixture
def fal(io_loop, image_host):
    """A fake fal queue."""
    fake = FakeFal(image_host)
    yield fake
    fake.close()


@pytest.fixture
def dashscope(io_loop, image_host):
    """A fake DashScope."""
    fake = FakeDashScope(image_host)
    yield fake
    fake.close()


async def fetch(
    client: AsyncHTTPClient,
    url: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, HTTPResponse]:
    """One request; (status, decoded JSON or None, response)."""
    response = await client.fetch(
        url,
        method=method,
        body=None if body is None else json.dumps(body),
        headers=headers or {},
        raise_error=False,
        allow_nonstandard_methods=True,
    )
    try:
        decoded = json.loads(response.body or b"")
    except ValueError:
        decoded = None
    return response.code, decoded, response


@pytest.mark.gen_test
async def test_bfl_submission_pending_polls_then_a_ready_sample(client, bfl):
    key = {"x-key": "bfl-k1"}
    code, task, _ = await fetch(
        client, bfl.url("v1/flux-pro-1.1"), "POST", {"prompt": "a cat", "width": 1024}, key
    )
    assert code == 200 and set(task) >= {"id", "polling_url"}
    statuses = []
    for _ in range(3):
        code, answer, _ = await fetch(client, task["polling_url"], headers=key)
        statuses.append(answer["status"])
    assert statuses == ["Pending", "Pending", "Ready"]
    assert png_info((await client.fetch(answer["result"]["sample"])).body)
    assert bfl.only_task().body["prompt"] == "a cat"
    assert [r.key for r in bfl.requests] == ["bfl-k1"] * 4
    code, missing, _ = await fetch(client, bfl.url("v1/get_result?id=nope"), headers=key)
    assert (code, missing["status"]) == (200, "Task not found")


@pytest.mark.gen_test
async def test_bfl_moderation_failure_key_and_429(client, bfl):
    key = {"x-key": "bfl-k1"}
    bfl.next_tasks(
        TaskScript(pending=0, outcome=MODERATED), TaskScript(pending=0, outcome=FAILED, reason="x")
    )
    outcomes = []
    for _ in range(2):
        _, task, _ = await fetch(client, bfl.url("v1/flux-2-pro"), "POST", {"prompt": "p"}, key)
        _, answer, _ = await fetch(client, task["polling_url"], headers=key)
        outcomes.append((answer["status"], answer["details"]))
    assert outcomes == [
        ("Content Moderated", {"Moderation Reasons": ["Derivative Works Filter"]}),
        ("Error", {"error": "x"}),
    ]
    code, answer, _ = await fetch(client, bfl.url("v1/flux-2-pro"), "POST", {"prompt": "p"})
    assert code == 401 and "detail" in answer
    bfl.script(FakeBFL.error_answer(429, "too many active tasks", **{"Retry-After": "2"}))
    code, _, response = await fetch(client, bfl.url("v1/flux-2-pro"), "POST", {}, key)
    assert (code, response.headers["Retry-After"]) == (429, "2")


@pytest.mark.gen_test
async def test_replicate_prefer_wait_may_finish_at_once_else_poll_then_cancel(client, replicate):
    key = {"Authorization": "Bearer r8-k1", "Prefer": "wait"}
    replicate.next_tasks(TaskScript(pending=0), TaskScript(outcome=NEVER))
    url = replicate.url("v1/models/black-forest-labs/flux-schnell/predictions")
    code, done, _ = await fetch(client, url, "POST", {"input": {"num_outputs": 2}}, key)
    assert (code, done["status"], len(done["output"])) == (201, "succeeded", 2)
    code, started, _ = await fetch(
        client, replicate.url("v1/predictions"), "POST", {"version": "a" * 64, "input": {}}, key
    )
    assert (code, started["status"]) == (201, "starting")
    _, running, _ = await fetch(client, started["urls"]["get"], headers=key)
    assert running["status"] == "processing" and "%|" in running["logs"]
    _, cancelled, _ = await fetch(client, started["urls"]["cancel"], "POST", {}, key)
    assert cancelled["status"] == "canceled"
    assert replicate.cancels == [started["id"]]
    _, after, _ = await fetch(client, started["urls"]["get"], headers=key)
    assert after["status"] == "canceled"


@pytest.mark.gen_test
async def test_replicate_failures_single_output_and_expiring_links(client, replicate, image_host):
    key = {"Authorization": "Bearer r8-k1"}
    url = replicate.url("v1/predictions")
    replicate.next_tasks(
        TaskScript(pending=0, outcome=MODERATED),
        TaskScript(pending=0, outcome=FAILED, reason="boom"),
        TaskScript(pending=0, expires=True),
    )
    replicate.single_output = True
    seen = []
    for _ in range(3):
        _, started, _ = await fetch(client, url, "POST", {"version": "v", "input": {}}, key)
        _, answer, _ = await fetch(client, started["urls"]["get"], headers=key)
        seen.append((answer["status"], answer["error"]))
    assert seen == [
        ("failed", "NSFW content detected. Try running it again, or try a different prompt."),
        ("failed", "boom"),
        ("succeeded", None),
    ]
    link = answer["output"]
    assert isinstance(link, str)
    assert (await client.fetch(link, raise_error=False)).code == 200
    assert (await client.fetch(link, raise_error=False)).code == 403
    replicate.script(FakeReplicate.throttled("3"))
    code, _, response = await fetch(client, url, "POST", {"input": {}}, key)
    assert (code, response.headers["Retry-After"]) == (429, "3")


@pytest.mark.gen_test
async def test_replicate_refuses_an_aspect_ratio_outside_the_models_enum(client, replicate):
    key = {"Authorization": "Bearer r8-k1"}
    pro = replicate.url("v1/models/black-forest-labs/flux-1.1-pro/predictions")
    code, refused, _ = await fetch(client, pro, "POST", {"input": {"aspect_ratio": "21:9"}}, key)
    assert (code, refused["title"]) == (422, "Input validation failed")
    assert refused["invalid_fields"][0]["field"] == "input.aspect_ratio"
    assert replicate.tasks == {}
    code, _, _ = await fetch(client, pro, "POST", {"input": {"aspect_ratio": "16:9"}}, key)
    assert code == 201
    schnell = replicate.url("v1/models/black-forest-labs/flux-schnell/predictions")
    code, _, _ = await fetch(client, schnell, "POST", {"input": {"aspect_ratio": "21:9"}}, key)
    assert code == 201
    assert len(replicate.tasks) == 2


@pytest.mark.gen_test
async def test_fal_queue_status_result_and_cancel(client, fal):
    key = {"Authorization": "Key fal-k1"}
    fal.next_tasks(TaskScript(pending=3, queued=2), TaskScript(outcome=NEVER))
    code, task, _ = await fetch(
        client, fal.url("fal-ai/flux/dev"), "POST", {"prompt": "a cat", "num_images": 2}, key
    )
    assert code == 200
    assert task["status_url"].endswith(f"/fal-ai/flux/requests/{task['request_id']}/status")
    assert task["response_url"].endswith(f"/fal-ai/flux/requests/{task['request_id']}")
    code, _, _ = await fetch(client, task["response_url"], headers=key)
    assert code == 400
    seen = []
    for _ in range(4):
        code, status, _ = await fetch(client, task["status_url"] + "?logs=1", headers=key)
        seen.append((code, status["status"], status.get("queue_position")))
    assert seen == [
        (202, "IN_QUEUE", 1),
        (202, "IN_QUEUE", 0),
        (202, "IN_PROGRESS", None),
        (200, "COMPLETED", None),
    ]
    code, result, _ = await fetch(client, task["response_url"], headers=key)
    assert code == 200 and len(result["images"]) == 2
    assert result["has_nsfw_concepts"] == [False, False]
    code, answer, _ = await fetch(client, task["cancel_url"], "PUT", {}, key)
    assert (code, answer["status"]) == (400, "ALREADY_COMPLETED")
    _, second, _ = await fetch(client, fal.url("fal-ai/flux/dev"), "POST", {"prompt": "p"}, key)
    code, answer, _ = await fetch(client, second["cancel_url"], "PUT", {}, key)
    assert (code, answer["status"]) == (202, "CANCELLATION_REQUESTED")
    assert fal.cancels == [task["request_id"], second["request_id"]]


@pytest.mark.gen_test
async def test_fal_failure_moderation_and_scripted_polls(client, fal):
    key = {"Authorization": "Key fal-k1"}
    fal.next_tasks(
        TaskScript(pending=0, outcome=FAILED, reason="out of memory"),
        TaskScript(pending=0, outcome=MODERATED),
    )
    _, failed, _ = await fetch(client, fal.url("fal-ai/flux/dev"), "POST", {}, key)
    _, status, _ = await fetch(client, failed["status_url"], headers=key)
    assert status["status"] == "COMPLETED"
    code, answer, response = await fetch(client, failed["response_url"], headers=key)
    assert (code, answer["detail"]) == (500, "out of memory")
    assert response.headers["X-Fal-Error-Type"] == "internal_error"
    _, flagged, _ = await fetch(client, fal.url("fal-ai/flux/dev"), "POST", {}, key)
    await fetch(client, flagged["status_url"], headers=key)
    _, result, _ = await fetch(client, flagged["response_url"], headers=key)
    assert result["has_nsfw_concepts"] == [True]
    fal.script_polls(Answer(429, {"detail": "slow down"}, headers={"Retry-After": "1"}))
    code, _, _ = await fetch(client, flagged["status_url"], headers=key)
    assert code == 429
    code, _, _ = await fetch(client, fal.url("fal-ai/flux/dev"), "POST", {})
    assert code == 401
    assert [len(fal.submissions()), len(fal.polls())] == [3, 5]


DS_KEY = "sk-ds-fake-key-k1"
register_secret(DS_KEY)


def qwen_edit(model: str = "qwen-image-edit-plus", images: int = 1, **parameters: Any) -> dict:
    """A DashScope edit body: ``images`` PNG data URIs, then the text."""
    content: list[dict[str, str]] = [{"image": data_uri()} for _ in range(images)]
    content.append({"text": "a hat"})
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }


def reordered(body: dict) -> dict:
    """``body`` with its text first, its images after."""
    content = body["input"]["messages"][0]["content"]
    body["input"]["messages"][0]["content"] = content[-1:] + content[:-1]
    return body


def with_image(body: dict, uri: str) -> dict:
    """``body`` with its first image replaced by ``uri``."""
    body["input"]["messages"][0]["content"][0] = {"image": uri}
    return body


async def assert_invalid(
    client: AsyncHTTPClient, url: str, bodies: list[dict], headers: dict[str, str]
) -> None:
    """Each body POSTed to ``url`` is refused as DashScope refuses one: 400 InvalidParameter."""
    for body in bodies:
        code, answer, _ = await fetch(client, url, "POST", body, headers)
        assert (code, answer["code"]) == (400, "InvalidParameter"), body


@pytest.mark.gen_test
async def test_dashscope_edits_are_checked_as_the_service_checks_them(client, dashscope):
    url = dashscope.url(dashscope.sync_path)
    key = {"Authorization": f"Bearer {DS_KEY}", "Content-Type": "application/json"}
    code, answer, _ = await fetch(client, url, "POST", qwen_edit(images=2, n=2), key)
    assert code == 200, answer
    [choice] = answer["output"]["choices"]
    links = [part["image"] for part in choice["message"]["content"]]
    assert len(links) == 2
    for link in links:
        assert png_info((await client.fetch(link)).body)
    jpeg = "data:image/jpeg;base64," + data_uri(jpeg_bytes()).split(",", 1)[1]
    code, _, _ = await fetch(client, url, "POST", with_image(qwen_edit(), jpeg), key)
    assert code == 200
    refused = [
        qwen_edit(images=0),
        qwen_edit(images=4),
        reordered(qwen_edit()),
        with_image(qwen_edit(), "data:image/png;base64,bm90IGFuIGltYWdl"),
        with_image(qwen_edit(), "data:image/png;base64,!!"),
        qwen_edit("qwen-image-edit", size="1024*1024"),
        qwen_edit("qwen-image-edit", n=2),
        qwen_edit(n=7),
        qwen_edit(size="256*256"),
        qwen_edit(size="1024x1024"),
        qwen_edit(seed=2**31),
        qwen_edit("wan2.2-t2i-flash"),
    ]
    await assert_invalid(client, url, refused, key)
    code, answer, _ = await fetch(client, url, "POST", qwen_edit(), {})
    assert (code, answer["code"]) == (401, "InvalidApiKey")
    async_call = {**key, "X-DashScope-Async": "enable"}
    code, answer, _ = await fetch(client, url, "POST", qwen_edit(), async_call)
    assert (code, answer["code"]) == (403, "AccessDenied")
    assert len(dashscope.sync_calls) == 2 and dashscope.tasks == {}


def wan26(model: str = "wan2.6-t2i", images: int = 0, **parameters: Any) -> dict:
    """A Wan 2.6 submission: the text, then ``images`` PNG data URIs."""
    content: list[dict] = [{"text": "a kite"}]
    content += [{"image": data_uri()} for _ in range(images)]
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": {"n": 1, "size": "1280*1280", **parameters},
    }


@pytest.mark.gen_test
async def test_dashscope_wan26_tasks_are_checked_and_answer_in_the_chat_format(client, dashscope):
    dashscope.plan = ["done"]
    url = dashscope.url(dashscope.messages_path)
    key = {
        "Authorization": f"Bearer {DS_KEY}",
        "Content-Type": "application/json",
        "X-DashScope-Async": "enable",
    }
    code, answer, _ = await fetch(client, url, "POST", wan26(n=2), key)
    assert code == 200, answer
    task_id = answer["output"]["task_id"]
    code, status, _ = await fetch(client, dashscope.url(f"/api/v1/tasks/{task_id}"), headers=key)
    assert status["output"]["task_status"] == "SUCCEEDED" and "results" not in status["output"]
    links = [
        part["image"]
        for choice in status["output"]["choices"]
        for part in choice["message"]["content"]
    ]
    assert len(links) == 2
    for link in links:
        assert png_info((await client.fetch(link)).body)
    for body in (wan26("wan2.6-image", images=4), wan26("wan2.6-image", enable_interleave=True)):
        code, answer, _ = await fetch(client, url, "POST", body, key)
        assert code == 200, answer
    refused = [
        wan26(images=1),
        wan26("wan2.6-image"),
        wan26("wan2.6-image", images=5),
        wan26("wan2.6-image", images=2, enable_interleave=True),
        wan26(n=5),
        wan26(size="1024*1024"),
        wan26(size="2880*640"),
        wan26(seed=2**31),
        wan26("wan2.5-t2i-preview"),
    ]
    await assert_invalid(client, url, refused, key)
    without_async = {name: value for name, value in key.items() if name != "X-DashScope-Async"}
    code, answer, _ = await fetch(client, url, "POST", wan26(), without_async)
    assert (code, answer["code"]) == (403, "AccessDenied")
    # The text-to-image endpoint knows no Wan 2.6 model.
    legacy = {"model": "wan2.6-t2i", "input": {"prompt": "a kite"}, "parameters": {"n": 1}}
    code, answer, _ = await fetch(client, dashscope.url(dashscope.submit_path), "POST", legacy, key)
    assert (code, answer["code"]) == (400, "InvalidParameter")
    assert "Model not exist" in answer["message"]
    assert len(dashscope.tasks) == 3


@pytest.mark.gen_test
async def test_dashscope_runs_only_two_qwen_image_models_as_tasks(client, dashscope):
    key = {"Authorization": f"Bearer {DS_KEY}", "Content-Type": "application/json"}
    url = dashscope.url(dashscope.sync_path)
    accepted = [
        qwen_edit("qwen-image-max", images=0, size="1664*928"),
        qwen_edit("qwen-image-max-2025-12-30", images=0, size="1472*1104"),
        qwen_edit("qwen-image-plus", images=0),
        qwen_edit("qwen-image-2.0-pro", images=0, n=6, size="2048*1152"),
        qwen_edit("qwen-image-2.0", images=3),
    ]
    for body in accepted:
        code, answer, _ = await fetch(client, url, "POST", body, key)
        assert code == 200, (body, answer)
    refused = [
        qwen_edit("qwen-image-max", images=1),
        qwen_edit("qwen-image-max", images=0, n=2),
        qwen_edit("qwen-image-max", images=0, size="1024*1024"),
        qwen_edit("qwen-image-2.0", images=4),
        qwen_edit("qwen-image-2.0", images=0, n=7),
        qwen_edit("qwen-image-2.0", images=0, size="256*256"),
    ]
    await assert_invalid(client, url, refused, key)
    tasks = dashscope.url(dashscope.submit_path)
    with_async = {**key, "X-DashScope-Async": "enable"}
    for model, known in [
        ("qwen-image-max", False),
        ("qwen-image", True),
        ("wan2.5-t2i-preview", True),
    ]:
        body = {"model": model, "input": {"prompt": "a kite"}, "parameters": {"n": 1}}
        code, answer, _ = await fetch(client, tasks, "POST", body, with_async)
        assert (code == 200) is known, (model, answer)
    assert len(dashscope.sync_calls) == len(accepted) and len(dashscope.tasks) == 2
