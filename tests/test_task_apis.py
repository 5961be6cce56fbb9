"""How the bfl, replicate and fal APIs read answers they were not shown in the docs' examples.

Unknown statuses keep the task polling, extra and missing fields are tolerated, and a task's
links receive the key only on the configured service.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import pytest
from fakes import b64_png, png_bytes
from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate.providers import ProviderAnswerError, ProviderCall
from tornado_imagegate.providers.bfl import BflApi
from tornado_imagegate.providers.fal import FalApi
from tornado_imagegate.providers.replicate import ReplicateApi, aspect_ratio, model_and_version
from tornado_imagegate.providers.task_engine import TaskHandle, TaskStatus
from tornado_imagegate.providers.task_links import last_percent, same_service


def answer(body: Any, code: int = 200) -> HTTPResponse:
    """An HTTP answer with this JSON body."""
    return HTTPResponse(
        HTTPRequest("http://provider/"), code, buffer=BytesIO(json.dumps(body).encode())
    )


@pytest.mark.parametrize(
    ("url", "endpoint", "trusted"),
    [
        ("https://api.bfl.ai/v1/get_result?id=1", "https://api.bfl.ai/v1", True),
        ("https://api.us1.bfl.ai/v1/get_result?id=1", "https://api.bfl.ai/v1", True),
        ("https://gateway.bfl.ai/v1/get_result?id=1", "https://api.bfl.ai/v1", True),
        ("http://api.us1.bfl.ai/v1/get_result?id=1", "https://api.bfl.ai/v1", False),
        ("https://evil.example/v1/get_result?id=1", "https://api.bfl.ai/v1", False),
        ("https://bfl.ai.evil.example/x", "https://api.bfl.ai/v1", False),
        ("https://api.replicate.com/v1/predictions/x", "https://api.replicate.com/v1", True),
        ("https://queue.fal.run/fal-ai/flux/requests/1", "https://queue.fal.run", True),
        ("https://fal.run/x", "https://queue.fal.run", True),
        ("http://127.0.0.1:8080/x", "http://127.0.0.1:8080/v1", True),
        ("http://127.0.0.1:9090/x", "http://127.0.0.1:8080/v1", False),
        ("http://localhost:8080/x", "http://127.0.0.1:8080/v1", False),
        ("http://10.0.0.1:8080/x", "http://10.0.0.2:8080/v1", False),
        ("file:///etc/passwd", "https://api.bfl.ai/v1", False),
        ("https://[::1", "https://api.bfl.ai/v1", False),
    ],
)
def test_a_task_link_gets_the_key_only_on_the_configured_service(url, endpoint, trusted):
    assert same_service(url, endpoint) is trusted


def test_percent_is_the_last_in_a_log() -> None:
    logs = "Using seed: 42\n  0%|          | 0/4\n 50%|#####     | 2/4\n 75%|#######   | 3/4\n"
    assert last_percent(logs) == 75
    assert last_percent("no progress here") is None
    assert last_percent(None) is None


def test_bfl_reads_state_instead_of_status_unknown_statuses_and_progress() -> None:
    api = BflApi()
    sample = {"status": "Ready", "result": {"sample": "https://delivery-eu1.bfl.ai/a.png"}}
    assert api.read_poll(answer(sample)).images[0].url.endswith("a.png")
    assert api.read_poll(answer({"state": "Ready", "result": {"sample": "https://d/x"}})).images
    assert api.read_poll(answer({"status": "Pending", "progress": 0.4})).percent == 40
    assert api.read_poll(answer({"status": "Pending", "progress": 40})).percent == 40
    unknown = api.read_poll(answer({"status": "Warming Up", "extra": [1, 2]}))
    assert unknown.status is TaskStatus.RUNNING
    lost = api.read_poll(answer({"id": "x", "status": "Task not found"}))
    assert lost.status is TaskStatus.FAILED
    refused = api.read_poll(answer({"status": "Request Moderated", "details": {"Reason": ["x"]}}))
    assert (refused.status, refused.reason) == (TaskStatus.REJECTED, "Request Moderated: x")
    assert api.read_poll(answer({"status": "Ready", "result": None})).images == ()
    with pytest.raises(ProviderAnswerError):
        api.read_submission(answer({"polling_url": "https://api.bfl.ai/v1/get_result"}))


def test_bfl_sizes() -> None:
    api = BflApi()
    assert api.fit_size("flux-pro-1.1", 1024, 576) == (1024, 576)
    assert api.fit_size("flux-pro-1.1", 2048, 2048) == (1440, 1440)
    assert api.fit_size("flux-pro-1.1", 1000, 700) == (992, 704)
    width, height = api.fit_size("flux-kontext-pro", 2048, 512)
    assert width / height <= 21 / 9 + 0.05


def test_replicate_models_versions_ratios_and_outputs() -> None:
    assert model_and_version("black-forest-labs/flux-schnell") == (
        "black-forest-labs/flux-schnell",
        "",
    )
    assert model_and_version("a/b:" + "f" * 64) == ("a/b", "f" * 64)
    assert model_and_version("f" * 64) == ("", "f" * 64)
    assert aspect_ratio(1024, 576) == "16:9" and aspect_ratio(512, 1024) == "9:16"
    api = ReplicateApi(timeout=30)
    data_uri = "data:image/png;base64," + b64_png(png_bytes())
    done = api.read_poll(answer({"status": "succeeded", "output": {"image": data_uri}}))
    assert done.images[0].data == png_bytes()
    listed = api.read_poll(answer({"status": "succeeded", "output": ["https://r/a.webp", 3, None]}))
    assert [image.url for image in listed.images] == ["https://r/a.webp"]
    assert api.read_poll(answer({"status": "aborted"})).status is TaskStatus.FAILED
    assert api.read_poll(answer({"status": "booting"})).status is TaskStatus.RUNNING
    failed = api.read_poll(answer({"status": "failed", "error": None}))
    assert (failed.status, failed.reason) == (TaskStatus.FAILED, "the prediction failed")
    # A prediction answer without urls is still followed, at the configured base.
    state = api.read_submission(answer({"id": "abc", "status": "starting"}, 201))
    call = ProviderCall("https://api.replicate.com/v1", "k", "m", None, "p", 1, (1, 1), 1)
    assert api.poll(state.handle, call).url == "https://api.replicate.com/v1/predictions/abc"
    assert api.cancel(state.handle, call).url.endswith("/predictions/abc/cancel")


def test_fal_completed_errors_single_image_and_flags() -> None:
    api = FalApi()
    assert api.read_poll(answer({"status": "COMPLETED", "error": "boom"}, 200)).reason == "boom"
    assert api.read_poll(answer({"status": "IN_QUEUE"})).queue_position is None
    assert api.read_poll(answer({"status": "SOMETHING_NEW"})).status is TaskStatus.QUEUED
    single = api.read_result(answer({"image": {"url": "https://v3.fal.media/a.png"}}))
    assert single.images[0].url.endswith("a.png")
    mixed = api.read_result(
        answer(
            {
                "images": [{"url": "https://f/1.png"}, {"url": "https://f/2.png"}],
                "nsfw_content_detected": [True, False],
            }
        )
    )
    assert [image.url for image in mixed.images] == ["https://f/2.png"]
    assert api.read_result(answer({"images": []})).images == ()
    handle = TaskHandle("r1", poll_url="https://evil.example/status")
    call = ProviderCall("https://queue.fal.run", "k", "fal-ai/flux/dev", None, "p", 1, (1, 1), 1)
    assert (
        api.poll(handle, call).url == "https://queue.fal.run/fal-ai/flux/requests/r1/status?logs=1"
    )
    assert api.cancel(handle, call).method == "PUT"
