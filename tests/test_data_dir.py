"""The data directory: a generated key, the link secret and the images outlive the process."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import register_secret
from processes import STOP_DEADLINE, Gateway, clean_env
from test_cli import EXIT_CONFIG, http, run_cli

from tornado_imagegate.config import load_settings
from tornado_imagegate.datadir import (
    CLIENT_KEY_FILE,
    LINK_SECRET_FILE,
    DataDirError,
    kept_secret,
)
from tornado_imagegate.server import with_kept_state

START_DEADLINE = 30.0
KEY_LINE = r"^\s+(sk-imagegate-\S+)\s*$"
IMAGE_LINK = r"\((http://127\.0\.0\.1:\d+/image-proxy\?id=[0-9a-f]+)\)"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- where it is ---


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/imagegate", "HOME": "/home/u"}, "/var/lib/imagegate"),
        ({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, "/var/lib/a"),
        ({"XDG_DATA_HOME": "/data", "HOME": "/home/u"}, "/data/imagegate"),
        ({"XDG_DATA_HOME": "relative", "HOME": "/home/u"}, "/home/u/.local/share/imagegate"),
        ({"HOME": "/home/u"}, "/home/u/.local/share/imagegate"),
        ({}, ""),
        ({"HOME": "/home/u", "IMAGEGATE_DATA_DIR": "/srv/gate"}, "/srv/gate"),
        ({"HOME": "/home/u", "IMAGEGATE_DATA_DIR": ""}, ""),
    ],
)
def test_the_data_directory_comes_from_the_environment_given(environ, expected):
    settings = load_settings(environ)
    assert settings.data_dir == expected
    assert settings.image_cache_dir == (f"{expected}/images" if expected else "")


def test_an_explicit_image_cache_dir_wins_and_an_empty_one_means_no_disk_tier():
    home = {"HOME": "/home/u"}
    assert load_settings({**home, "IMAGE_CACHE_DIR": "/cache"}).image_cache_dir == "/cache"
    assert load_settings({**home, "IMAGE_CACHE_DIR": ""}).image_cache_dir == ""


def test_check_config_names_the_directory_and_what_is_kept_there(tmp_path):
    directory = tmp_path / "state"
    result = run_cli("--check-config", env=clean_env(IMAGEGATE_DATA_DIR=str(directory)))
    assert result.returncode == 0, result.stderr
    assert (
        f"data directory: {directory} (IMAGEGATE_DATA_DIR), keeps the generated client key, "
        "the link-signing secret, the images" in result.stdout
    )
    assert not directory.exists()  # a check makes nothing
    result = run_cli("--check-config")
    assert "data directory: none, memory only (IMAGEGATE_DATA_DIR)" in result.stdout


def test_check_config_says_a_kept_client_key_is_used_and_never_shows_it(tmp_path):
    directory = tmp_path / "state"
    result = run_cli("--check-config", env=clean_env(IMAGEGATE_DATA_DIR=str(directory)))
    assert "client keys: none configured: one is generated at start-up" in result.stdout
    directory.mkdir()
    key = "sk-imagegate-kept-key-for-check-config-7d2e"
    register_secret(key)
    (directory / "client-key").write_text(key + "\n")
    result = run_cli("--check-config", env=clean_env(IMAGEGATE_DATA_DIR=str(directory)))
    assert result.returncode == 0, result.stderr
    assert f"client keys: none configured: the one kept in {directory}/client-key" in result.stdout
    assert key not in result.stdout + result.stderr


# --- the files ---


def test_the_key_and_secret_are_made_once_with_owner_only_modes(tmp_path):
    directory = tmp_path / "new" / "imagegate"
    settings = load_settings({"IMAGEGATE_DATA_DIR": str(directory)})
    first = with_kept_state(settings)
    assert mode_of(directory) == 0o700
    for name in (CLIENT_KEY_FILE, LINK_SECRET_FILE):
        assert mode_of(directory / name) == 0o600
    assert first.client_keys_generated
    assert len(bytes.fromhex(first.image_proxy_secret)) == 32
    again = with_kept_state(settings)
    assert again.client_keys == first.client_keys
    assert again.image_proxy_secret == first.image_proxy_secret
    assert sorted(os.listdir(directory)) == [CLIENT_KEY_FILE, LINK_SECRET_FILE]


def test_configured_values_are_not_replaced_nor_written(tmp_path):
    settings = load_settings(
        {
            "IMAGEGATE_DATA_DIR": str(tmp_path),
            "AUTHORIZED_API_KEY": "configured-client-key",
            "IMAGE_PROXY_SECRET": "configured-secret",
        }
    )
    kept = with_kept_state(settings)
    assert kept.client_keys == ("configured-client-key",)
    assert kept.image_proxy_secret == "configured-secret"
    assert os.listdir(tmp_path) == []


def test_many_makers_at_once_end_with_one_value(tmp_path):
    start = threading.Barrier(16)
    found: list[str] = []

    def make() -> None:
        start.wait()
        found.append(kept_secret(str(tmp_path), "racy", lambda: os.urandom(16).hex()))

    threads = [threading.Thread(target=make) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 16 and len(set(found)) == 1
    assert os.listdir(tmp_path) == ["racy"]


def test_a_directory_that_cannot_be_written_is_refused_with_its_variable(tmp_path):
    blocked = tmp_path / "file-in-the-way"
    blocked.write_text("")
    settings = load_settings({"IMAGEGATE_DATA_DIR": str(blocked / "imagegate")})
    with pytest.raises(DataDirError, match=r"^IMAGEGATE_DATA_DIR: cannot create"):
        with_kept_state(settings)
    result = run_cli("--port", "0", env=clean_env(IMAGEGATE_DATA_DIR=str(blocked / "imagegate")))
    assert result.returncode == EXIT_CONFIG
    assert "IMAGEGATE_DATA_DIR: cannot create" in result.stderr
    assert "Traceback" not in result.stderr


# --- real gateways ---


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Any]:
    """Start gateway subprocesses; every one is killed and reaped at the end of the test."""
    started: list[Gateway] = []

    def start(env: dict[str, str]) -> Gateway:
        gateway = Gateway(["--port", "0"], env, tmp_path / f"stderr-{len(started)}.log")
        started.append(gateway)
        return gateway

    try:
        yield start
    finally:
        for gateway in started:
            gateway.close()


def started(gateway: Gateway, kept_in: Path | None = None) -> tuple[str, str]:
    """Wait for the welcome text; its base URL and the key it printed (saying where it is kept)."""
    deadline = time.monotonic() + START_DEADLINE
    listening, _ = gateway.read_until(r"listening on 127\.0\.0\.1:(\d+)\s*$", deadline)
    key, welcome = gateway.read_until(KEY_LINE, deadline)
    if kept_in is not None:
        assert f"key, kept in {kept_in / CLIENT_KEY_FILE} and used at every start" in "\n".join(
            welcome
        )
    return f"http://127.0.0.1:{listening.group(1)}", key.group(1)


def generate(base: str, key: str, prompt: str, **options: Any) -> str:
    """A chat completion of the demo model; the image link it answers with."""
    chat = {
        "model": "imagegate-demo",
        "messages": [{"role": "user", "content": prompt}],
        **options,
    }
    status, _, body = http(f"{base}/v1/chat/completions", key=key, body=chat)
    assert status == 200, body
    link = re.search(IMAGE_LINK, json.loads(body)["choices"][0]["message"]["content"])
    assert link, body
    return link.group(1)


def on(base: str, link: str) -> str:
    """``link`` as served by the gateway at ``base``."""
    return re.sub(r"^http://127\.0\.0\.1:\d+", base, link)


def stop(gateway: Gateway) -> None:
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=STOP_DEADLINE) == 0


def test_a_restart_keeps_the_key_and_every_link(gateways, tmp_path):
    """The quick start, restarted: clients keep their key, chat histories keep their images."""
    data_dir = tmp_path / "imagegate"
    env = clean_env(IMAGEGATE_DATA_DIR=str(data_dir))
    first = gateways(env)
    base, key = started(first, kept_in=data_dir)
    link = generate(base, key, "a lighthouse in a storm")
    same_picture = generate(base, key, "a lighthouse at night", seed=11)
    status, _, image = http(link)
    assert status == 200 and image.startswith(b"\x89PNG")
    stop(first)

    second = gateways(env)
    base, key_again = started(second, kept_in=data_dir)
    assert key_again == key
    status, _, _ = http(f"{base}/v1/models", key=key)
    assert status == 200
    status, headers, served = http(on(base, link))
    assert status == 200
    assert served == image and headers["Content-Type"] == "image/png"
    # The same link for the same picture: the secret that signs image ids was kept too.
    assert on("", generate(base, key, "a lighthouse at night", seed=11)) == on("", same_picture)
    assert mode_of(data_dir) == 0o700
    assert mode_of(data_dir / CLIENT_KEY_FILE) == 0o600
    assert mode_of(data_dir / LINK_SECRET_FILE) == 0o600
    assert mode_of(data_dir / "images") == 0o700
    assert {mode_of(path) for path in (data_dir / "images").iterdir()} == {0o600}
    assert key not in first.stderr() + second.stderr()
    stop(second)


def test_an_empty_data_dir_keeps_nothing(gateways, tmp_path):
    env = clean_env(IMAGEGATE_DATA_DIR="", HOME=str(tmp_path))
    first = gateways(env)
    base, key = started(first)
    link = generate(base, key, "a red kite")
    stop(first)
    second = gateways(env)
    base, key_again = started(second)
    assert key_again != key
    status, _, _ = http(on(base, link))
    assert status == 404
    stop(second)
    assert os.listdir(tmp_path) == [name for name in os.listdir(tmp_path) if "stderr" in name]


def test_two_gateways_on_one_directory_serve_each_others_images(gateways, tmp_path):
    env = clean_env(IMAGEGATE_DATA_DIR=str(tmp_path / "shared"))
    one, two = gateways(env), gateways(env)  # at the same instant, on an empty directory
    (base_one, key_one), (base_two, key_two) = started(one), started(two)
    assert key_one == key_two
    # The same picture gets the same link from both: an image's id is signed with the secret.
    same = [generate(base, key_one, "a harbour at dawn", seed=7) for base in (base_one, base_two)]
    assert on("", same[0]) == on("", same[1])
    from_one = generate(base_one, key_one, "a harbour at dusk")
    from_two = generate(base_two, key_two, "a desert at noon")
    for base, link in ((base_two, from_one), (base_one, from_two)):
        status, _, data = http(on(base, link))
        assert status == 200 and data.startswith(b"\x89PNG")
