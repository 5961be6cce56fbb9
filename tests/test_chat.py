"""Chat completions with the demo provider: the answer, its link and the image behind it."""

from __future__ import annotations

import os
import re

import pytest
from conftest import CLIENT_KEYS, assert_error, call, chat_body, json_of, post_chat, with_env
from pngcheck import png_info

from tornado_imagegate import openai_api

LINK = re.compile(r"!\[((?:\\.|[^\]\\])*)\]\((\S+?)\)")


async def complete(http_client, base_url, body):
    """POST a chat completion that must succeed; return (answer, alt text, image link)."""
    response = await post_chat(http_client, base_url, body)
    assert response.code == 200, response.body
    answer = json_of(response)
    match = LINK.search(answer["choices"][0]["message"]["content"])
    assert match, answer
    return answer, match.group(1), match.group(2)


async def fetch_image(http_client, link, **headers):
    """GET an image link without auth, as a browser rendering the markdown would."""
    return await http_client.fetch(link, headers=headers, raise_error=False)


@pytest.mark.gen_test
async def test_answer_is_a_complete_chat_completion_with_a_markdown_image(http_client, base_url):
    answer, alt, link = await complete(http_client, base_url, chat_body("a red fox in snow"))
    assert answer["object"] == "chat.completion"
    assert answer["id"].startswith("chatcmpl-")
    assert answer["model"] == "imagegate-demo"
    assert isinstance(answer["created"], int)
    choice = answer["choices"][0]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == f"![{alt}]({link})"
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert alt == "a red fox in snow"
    assert link.startswith(f"{base_url}/image-proxy?id=")


@pytest.mark.gen_test
async def test_the_link_serves_a_png_of_the_asked_size_without_auth(http_client, base_url):
    _, _, link = await complete(http_client, base_url, chat_body("a lighthouse, 16:9"))
    response = await fetch_image(http_client, link)
    assert response.code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert int(response.headers["Content-Length"]) == len(response.body)
    info = png_info(response.body)
    assert (info["width"], info["height"]) == (1024, 576)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("prompt", "size", "alt"),
    [
        ("a cat, 1:1", (1024, 1024), "a cat"),
        ("a cat, 1:2", (512, 1024), "a cat"),
        ("a cat, 3:2", (768, 512), "a cat"),
        ("a cat, 3:4", (768, 1024), "a cat"),
        ("a cat 16:9", (1024, 576), "a cat"),
        ("9:16 a cat", (576, 1024), "a cat"),
        ("a cat，16：9", (1024, 576), "a cat"),
        ("a cat", (1024, 1024), "a cat"),
        ("a cat, aspect ratio 4:3", (1024, 768), "a cat"),
        ("meet at 10:30 by the river", (1024, 1024), "meet at 10:30 by the river"),
    ],
)
async def test_ratio_in_the_prompt_picks_the_size_and_leaves_the_prompt(
    http_client, base_url, prompt, size, alt
):
    _, got_alt, link = await complete(http_client, base_url, chat_body(prompt))
    assert got_alt == alt
    info = png_info((await fetch_image(http_client, link)).body)
    assert (info["width"], info["height"]) == size


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("extra", "size"),
    [
        ({"width": 640, "height": 320}, (640, 320)),
        ({"width": 333.6, "height": 100.2}, (334, 100)),
        ({"width": 10, "height": 99999}, (64, 2048)),
        ({"size": "800x600"}, (800, 600)),
        ({"size": "512x512", "width": 300, "height": 200}, (300, 200)),
        ({"width": 640}, (640, 360)),  # one side alone: the other follows the 16:9 asked for
        ({"height": 288}, (512, 288)),
        ({"width": 5000}, (2048, 1152)),
    ],
)
async def test_explicit_sizes_win_over_the_ratio(http_client, base_url, extra, size):
    _, _, link = await complete(http_client, base_url, chat_body("a boat, 16:9", **extra))
    info = png_info((await fetch_image(http_client, link)).body)
    assert (info["width"], info["height"]) == size


@pytest.mark.gen_test
async def test_same_prompt_and_seed_give_the_same_image_and_another_seed_another(
    http_client, base_url
):
    images = []
    for seed in (7, 7, 8):
        _, _, link = await complete(http_client, base_url, chat_body("a tree", seed=seed))
        images.append((await fetch_image(http_client, link)).body)
    assert images[0] == images[1]
    assert images[0] != images[2]


@pytest.mark.gen_test
async def test_one_side_without_a_ratio_gives_the_default_shape(http_client, base_url):
    _, _, link = await complete(http_client, base_url, chat_body("a boat", width=320))
    info = png_info((await fetch_image(http_client, link)).body)
    assert (info["width"], info["height"]) == (320, 320)


@pytest.mark.gen_test
async def test_a_seed_sent_as_text_is_the_same_seed(http_client, base_url):
    images = []
    for seed in (42, "42", " 42 "):
        _, _, link = await complete(http_client, base_url, chat_body("a tree", seed=seed))
        images.append((await fetch_image(http_client, link)).body)
    assert images[0] == images[1] == images[2]


@pytest.mark.gen_test
async def test_without_a_seed_each_request_gets_a_new_picture(http_client, base_url):
    bodies = set()
    for _ in range(3):
        _, _, link = await complete(http_client, base_url, chat_body("a tree"))
        bodies.add((await fetch_image(http_client, link)).body)
    assert len(bodies) == 3


@pytest.mark.gen_test
async def test_prompt_is_the_last_user_message_with_text_parts_joined(http_client, base_url):
    body = {
        "model": "imagegate-demo",
        "messages": [
            {"role": "system", "content": "You draw."},
            {"role": "user", "content": "an old prompt"},
            {"role": "assistant", "content": "![old](http://x/y.png)"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a blue"},
                    {"type": "text", "text": "whale"},
                ],
            },
            {"role": "assistant", "content": "thinking"},
        ],
    }
    _, alt, _ = await complete(http_client, base_url, body)
    assert alt == "a blue whale"


@pytest.mark.gen_test
async def test_an_image_part_for_a_model_that_takes_none_is_400_naming_it(http_client, base_url):
    body = chat_body("a blue whale")
    body["messages"][-1]["content"] = [
        {"type": "text", "text": "a blue whale"},
        {"type": "image_url", "image_url": {"url": "http://x/ref.png"}},
    ]
    response = await post_chat(http_client, base_url, body)
    assert_error(response, 400, "image_input_not_supported")
    assert "imagegate-demo" in json_of(response)["error"]["message"]


@pytest.mark.gen_test
async def test_top_level_prompt_wins_over_messages(http_client, base_url):
    _, alt, _ = await complete(http_client, base_url, chat_body("ignored", prompt="a green frog"))
    assert alt == "a green frog"


@pytest.mark.gen_test
async def test_alt_text_cannot_break_the_markdown(http_client, base_url):
    prompt = "a sign saying ](http://evil.example/x.png) [click] ![x](y) \\ done"
    answer, alt, link = await complete(http_client, base_url, chat_body(prompt))
    content = answer["choices"][0]["message"]["content"]
    assert content.count("](") == 1
    assert link.startswith(base_url)
    assert "evil.example" not in link
    assert re.sub(r"\\(.)", r"\1", alt) == prompt


@pytest.mark.gen_test
async def test_long_prompt_alt_text_is_shortened(http_client, base_url):
    _, alt, _ = await complete(http_client, base_url, chat_body("word " * 100))
    assert len(alt) <= 80


@pytest.mark.gen_test
async def test_n_gives_one_markdown_image_each(http_client, base_url):
    answer, _, _ = await complete(http_client, base_url, chat_body("a star", n=3, seed=1))
    links = [m.group(2) for m in LINK.finditer(answer["choices"][0]["message"]["content"])]
    assert len(set(links)) == 3
    bodies = {(await fetch_image(http_client, link)).body for link in links}
    assert len(bodies) == 3


@pytest.mark.gen_test
async def test_no_enhance_marker_is_removed_from_the_prompt(http_client, base_url):
    _, alt, _ = await complete(http_client, base_url, chat_body("a quiet lake no-enhance"))
    assert alt == "a quiet lake"


@pytest.mark.gen_test
@with_env({"PUBLIC_BASE_URL": "https://images.example.org/gate/"})
async def test_public_base_url_makes_the_links(http_client, base_url):
    _, _, link = await complete(http_client, base_url, chat_body("a kite"))
    assert link.startswith("https://images.example.org/gate/image-proxy?id=")
    local = link.replace("https://images.example.org/gate", base_url)
    assert (await fetch_image(http_client, local)).code == 200


@pytest.mark.gen_test
async def test_a_hostile_host_header_does_not_reach_the_link(http_client, base_url):
    response = await post_chat(
        http_client,
        base_url,
        chat_body("a kite"),
        headers={"Host": "evil.example)[x](javascript:alert(1)"},
    )
    content = json_of(response)["choices"][0]["message"]["content"]
    assert "evil" not in content and "javascript" not in content


@pytest.mark.gen_test
async def test_image_answer_carries_cache_and_security_headers(http_client, base_url):
    _, _, link = await complete(http_client, base_url, chat_body("a moon"))
    response = await fetch_image(http_client, link)
    headers = response.headers
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "sandbox" in headers["Content-Security-Policy"]
    assert headers["ETag"].startswith('"')
    assert headers["Last-Modified"].endswith("GMT")
    again = await fetch_image(http_client, link, **{"If-None-Match": headers["ETag"]})
    assert again.code == 304
    assert again.body == b""
    head = await http_client.fetch(link, method="HEAD", raise_error=False)
    assert head.code == 200
    assert head.headers["Content-Length"] == headers["Content-Length"]
    assert head.body == b""


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "query",
    [
        "",
        "?id=",
        "?id=../../etc/passwd",
        "?id=ABCDEF0123456789ABCDEF0123456789",
        "?id=0123456789abcdef0123456789abcde",
        "?url=http%3A%2F%2F127.0.0.1%2Fsecret.png",
        "?url=https%3A%2F%2Fexample.com%2Fa.png&sig=00",
    ],
)
async def test_links_the_gateway_did_not_issue_are_403(http_client, base_url, query):
    response = await fetch_image(http_client, f"{base_url}/image-proxy{query}")
    assert_error(response, 403, "forbidden_image_link")


@pytest.mark.gen_test
async def test_an_altered_link_never_gives_another_image(http_client, base_url):
    _, _, link = await complete(http_client, base_url, chat_body("a castle", seed=3))
    image_id = link.rsplit("=", 1)[1]
    altered = image_id[:-1] + ("0" if image_id[-1] != "0" else "1")
    response = await fetch_image(http_client, link.replace(image_id, altered))
    assert_error(response, 404, "image_not_found")
    extra = await fetch_image(http_client, link + "&url=http%3A%2F%2F127.0.0.1%2F")
    assert_error(extra, 403, "forbidden_image_link")


@pytest.mark.gen_test
@with_env({"IMAGE_CACHE_MAX_BYTES": "60000"})
async def test_the_image_store_is_bounded_in_bytes(http_client, base_url, app):
    store = app.services.store
    links = []
    for seed in range(12):
        _, _, link = await complete(http_client, base_url, chat_body("a maze", seed=seed))
        links.append(link)
    assert store.cache.current_bytes <= 60000
    assert (await fetch_image(http_client, links[-1])).code == 200
    assert_error(await fetch_image(http_client, links[0]), 404, "image_not_found")


@pytest.mark.gen_test
async def test_both_client_keys_can_generate(http_client, base_url):
    for key in CLIENT_KEYS:
        response = await post_chat(
            http_client,
            base_url,
            chat_body("a key"),
            key=key,
        )
        assert response.code == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/chat/completions", "/v1/chat/completions/"])
async def test_route_aliases_for_clients_given_a_bare_base_url(http_client, base_url, path):
    response = await call(http_client, base_url, path, method="POST", body=chat_body("a dog"))
    assert response.code == 200


def test_completion_ids_are_fresh_in_every_process():
    ids = {openai_api.completion_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{32}", i) for i in ids)
    # A forked worker draws its own ids, not its parent's next ones.
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(writer, openai_api.completion_id().encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    with os.fdopen(reader, "rb") as pipe:
        assert pipe.read().decode() != openai_api.completion_id()
