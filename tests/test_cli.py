"""The ``imagegate`` command as a user runs it: real subprocesses, loopback only."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import pytest
from processes import COMMAND, NEUTRAL_CWD, STOP_DEADLINE, Gateway, clean_env

from tornado_imagegate import __version__
from tornado_imagegate.options import OPTIONS, group_variables, option_names

logger = logging.getLogger(__name__)

RUN_TIMEOUT = 30
START_DEADLINE = 30.0
EXIT_CONFIG = 2

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A full, valid configuration, and every secret in it.
CLIENT_KEYS = ("cli-client-key-one-4b7e", "cli-client-key-two-d2a9")
FLUX_KEYS = ("sk-flux-provider-key-11aa", "sk-flux-provider-key-22bb")
IMAGE_GEN_KEY = "sk-images-provider-key-33cc"
SD_KEY = "sk-sd-provider-key-44dd"
OPTIMISER_KEY = "sk-optimiser-key-55ee"
PROXY_SECRET = "proxy-secret-66ff"
QUERY_KEY = "query-key-77gg"
SECRETS = (*CLIENT_KEYS, *FLUX_KEYS, IMAGE_GEN_KEY, SD_KEY, OPTIMISER_KEY, PROXY_SECRET, QUERY_KEY)

FULL_CONFIG = {
    "FLUX_GEN_MODEL": "black-forest-labs/FLUX.1-schnell, black-forest-labs/FLUX.1-dev",
    "FLUX_GEN_API_BASE": "https://api.siliconflow.cn/v1/images/generations",
    "FLUX_GEN_API_KEY": ",".join(FLUX_KEYS),
    "IMAGE_GEN_MODEL_1": "gpt-image-1",
    "IMAGE_GEN_API_BASE_1": f"https://images.example.com/v1/images/generations?key={QUERY_KEY}",
    "IMAGE_GEN_API_KEY_1": IMAGE_GEN_KEY,
    "IMAGE_GEN_KIND_1": "openai-images",
    "SD_API_KEY": SD_KEY,
    "OPENAI_API_BASE": "https://llm.example.com/v1",
    "OPENAI_API_KEY": OPTIMISER_KEY,
    "OPENAI_MODEL": "gpt-4o-mini",
    "AUTHORIZED_API_KEY": ",".join(CLIENT_KEYS),
    "IMAGE_PROXY_SECRET": PROXY_SECRET,
}
FULL_MODELS = (
    "black-forest-labs/FLUX.1-schnell",
    "black-forest-labs/FLUX.1-dev",
    "gpt-image-1",
    "Z-Image",
    "imagegate-demo",
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command to completion; what it wrote to stderr goes to the test log."""
    result = subprocess.run(
        [*COMMAND, *args],
        env=clean_env() if env is None else env,
        cwd=NEUTRAL_CWD,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    for line in result.stderr.splitlines():
        logger.debug("imagegate stderr: %s", line)
    return result


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret {secret!r} leaked"


# --- flags ---


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"imagegate {__version__}"


def test_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--check-config" in result.stdout
    assert "--env-file" in result.stdout
    assert "--host" in result.stdout
    assert "--port" in result.stdout


def test_help_lists_every_variable() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in [*option_names(), *group_variables("n")]:
        assert re.search(rf"(^|\s){name}(\s|$)", result.stdout, re.MULTILINE), name


def test_unknown_flag_is_a_usage_error() -> None:
    result = run_cli("--no-such-flag")
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


# --- --check-config ---


def test_check_config_embedded_default() -> None:
    result = run_cli("--check-config")
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout
    assert "127.0.0.1:8080" in result.stdout
    assert "imagegate-demo" in result.stdout
    assert "prompt optimiser: off" in result.stdout
    assert "event loop: uvloop" in result.stdout


def test_check_config_full_valid_config() -> None:
    result = run_cli("--check-config", env=clean_env(**FULL_CONFIG))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "configuration is valid" in out
    for name in ("FLUX_GEN", "IMAGE_GEN_1", "SD", "demo"):
        assert re.search(rf"^\s+{name}:", out, re.MULTILINE), name
    for model in FULL_MODELS:
        assert model in out, model
    lines = out.splitlines()
    flux_line = next(line for line in lines if line.strip().startswith("FLUX_GEN:"))
    assert "siliconflow" in flux_line
    assert flux_line.endswith("2 keys")
    images_line = next(line for line in lines if line.strip().startswith("IMAGE_GEN_1:"))
    assert "openai-images" in images_line
    assert images_line.endswith("1 key")
    assert "https://images.example.com/v1/images/generations" in images_line
    sd_line = next(line for line in lines if line.strip().startswith("SD:"))
    assert sd_line.endswith("1 key")
    assert "gpt-4o-mini" in out
    assert "2 client keys" in out
    assert_no_secret(result.stdout, result.stderr)


def test_check_config_reports_every_setting_sizes_in_units_and_endpoints() -> None:
    env = {
        **FULL_CONFIG,
        "FLUX_GEN_API_BASE": "https://api.siliconflow.cn/v1",
        "OPENAI_API_BASE": "https://llm.example.com/v1/chat/completions",
        "IMAGE_CACHE_MAX_BYTES": str(3 * 1024 * 1024 // 2),
        "IMAGE_MAX_BYTES": "1000000",
    }
    result = run_cli("--check-config", env=clean_env(**env))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    shown = ("IMAGEGATE_HOST", "IMAGEGATE_PORT", "AUTHORIZED_API_KEY")
    for option in OPTIONS:
        if not option.name.startswith("OPENAI_") and option.name not in shown:
            assert f"({option.name})" in out, option.name
    assert "memory bound of the image store: 1.5 MiB (IMAGE_CACHE_MAX_BYTES)" in out
    assert "largest image the gateway fetches: 976.6 KiB (1000000 bytes) (IMAGE_MAX_BYTES)" in out
    assert "bound of the disk tier: 2 GiB (IMAGE_CACHE_DIR_MAX_BYTES)" in out
    flux_line = next(line for line in out.splitlines() if line.strip().startswith("FLUX_GEN:"))
    assert "https://api.siliconflow.cn/v1/images/generations," in flux_line
    assert "at https://llm.example.com/v1/chat/completions, 1 key" in out
    assert "warning" not in out
    assert_no_secret(result.stdout, result.stderr)


def test_check_config_says_which_of_a_name_and_its_alias_wins() -> None:
    env = {**FULL_CONFIG, "ENHANCE_OPENAI_MODEL": "another-model"}
    result = run_cli("--check-config", env=clean_env(**env))
    assert result.returncode == 0, result.stderr
    assert "model gpt-4o-mini at" in result.stdout
    assert result.stdout.splitlines()[-2:] == [
        "1 warning:",
        "  - ENHANCE_OPENAI_MODEL and OPENAI_MODEL are both set, to different values: "
        "OPENAI_MODEL is used",
    ]


BROKEN_CONFIGS = {
    "non-number port": ({"IMAGEGATE_PORT": "eighty"}, "IMAGEGATE_PORT"),
    "group base without key": (
        {
            "IMAGE_GEN_MODEL_3": "m3",
            "IMAGE_GEN_API_BASE_3": f"https://img.example.com/gen?key={QUERY_KEY}",
        },
        "IMAGE_GEN_API_KEY_3",
    ),
    "duplicate model id": ({"SD_MODEL": "gpt-image-1"}, "SD_MODEL"),
    "both optimiser models": ({"OPENAI_MODEL_REASONING": "deepseek-r1"}, "OPENAI_MODEL_REASONING"),
}


@pytest.mark.parametrize(
    ("change", "variable"), list(BROKEN_CONFIGS.values()), ids=list(BROKEN_CONFIGS)
)
def test_check_config_broken(change: dict[str, str], variable: str) -> None:
    result = run_cli("--check-config", env=clean_env(**{**FULL_CONFIG, **change}))
    assert result.returncode == EXIT_CONFIG
    assert "NOT valid" in result.stderr
    assert variable in result.stderr
    assert "Traceback" not in result.stderr
    assert "configuration is valid" not in result.stdout
    assert_no_secret(result.stdout, result.stderr)


def test_duplicate_model_names_both_variables() -> None:
    result = run_cli("--check-config", env=clean_env(**{**FULL_CONFIG, "SD_MODEL": "gpt-image-1"}))
    assert result.returncode == EXIT_CONFIG
    problem = next(
        line for line in result.stderr.splitlines() if "gpt-image-1" in line and "SD_MODEL" in line
    )
    assert "IMAGE_GEN_MODEL_1" in problem


def test_check_config_reports_every_problem() -> None:
    env = clean_env(IMAGEGATE_PORT="x", LLM_TIMEOUT="-1", LOG_LEVEL="loud")
    result = run_cli("--check-config", env=env)
    assert result.returncode == EXIT_CONFIG
    for name in ("IMAGEGATE_PORT", "LLM_TIMEOUT", "LOG_LEVEL"):
        assert name in result.stderr
    assert "3 problems" in result.stderr


def test_config_error_without_check_config_exits_before_listening() -> None:
    result = run_cli(env=clean_env(IMAGEGATE_PORT="abc"))
    assert result.returncode == EXIT_CONFIG
    assert "IMAGEGATE_PORT" in result.stderr
    assert "listening" not in result.stdout
    assert "sk-imagegate-" not in result.stdout
    assert "Traceback" not in result.stderr


def test_bad_port_flag_exits_2() -> None:
    result = run_cli("--check-config", "--port", "abc")
    assert result.returncode == EXIT_CONFIG
    assert "PORT" in result.stderr


def test_bad_port_flag_names_the_flag() -> None:
    result = run_cli("--check-config", "--port", "80.5", env=clean_env(IMAGEGATE_PORT="9000"))
    assert result.returncode == EXIT_CONFIG
    assert "  - --port (IMAGEGATE_PORT): must be a whole number in decimal digits (got '80.5')" in (
        result.stderr.splitlines()
    )


def test_bad_port_variable_names_the_variable_alone() -> None:
    result = run_cli("--check-config", env=clean_env(IMAGEGATE_PORT="1e3"))
    assert result.returncode == EXIT_CONFIG
    assert "  - IMAGEGATE_PORT: must be a whole number in decimal digits (got '1e3')" in (
        result.stderr.splitlines()
    )
    assert "--port" not in result.stderr


def test_port_flag_wins_over_environment() -> None:
    result = run_cli("--check-config", "--port", "9123", env=clean_env(IMAGEGATE_PORT="9000"))
    assert result.returncode == 0, result.stderr
    assert "listen: 127.0.0.1:9123" in result.stdout


def test_wildcard_host_without_client_key_exits_2() -> None:
    result = run_cli("--host", "0.0.0.0")
    assert result.returncode == EXIT_CONFIG
    assert "AUTHORIZED_API_KEY" in result.stderr
    assert "listening" not in result.stdout
    assert "Traceback" not in result.stderr


def test_wildcard_host_with_client_key_is_valid() -> None:
    env = clean_env(AUTHORIZED_API_KEY=CLIENT_KEYS[0])
    result = run_cli("--check-config", "--host", "0.0.0.0", env=env)
    assert result.returncode == 0, result.stderr
    assert "listen: 0.0.0.0:8080" in result.stdout
    assert_no_secret(result.stdout, result.stderr)


# --- --env-file ---


def _write_env_file(path: Path, values: dict[str, str]) -> None:
    lines = ["# gateway configuration", ""]
    lines += [f'{name}="{value}"' for name, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_env_file_values_are_used(tmp_path: Path) -> None:
    env_file = tmp_path / "imagegate.env"
    _write_env_file(env_file, FULL_CONFIG)
    result = run_cli("--check-config", "--env-file", str(env_file))
    assert result.returncode == 0, result.stderr
    for model in FULL_MODELS:
        assert model in result.stdout
    assert "2 client keys" in result.stdout
    assert_no_secret(result.stdout, result.stderr)


def test_environment_wins_over_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "imagegate.env"
    _write_env_file(env_file, {"SD_API_KEY": SD_KEY, "SD_MODEL": "model-from-file"})
    env = clean_env(SD_MODEL="model-from-environment")
    result = run_cli("--check-config", "--env-file", str(env_file), env=env)
    assert result.returncode == 0, result.stderr
    assert "model-from-environment" in result.stdout
    assert "model-from-file" not in result.stdout
    assert "Z-Image" not in result.stdout


def test_malformed_env_file_exits_2(tmp_path: Path) -> None:
    env_file = tmp_path / "broken.env"
    env_file.write_text("SD_API_KEY=abc\nthis is not an assignment\n", encoding="utf-8")
    result = run_cli("--check-config", "--env-file", str(env_file))
    assert result.returncode == EXIT_CONFIG
    assert str(env_file) in result.stderr
    assert "line 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_env_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("--check-config", "--env-file", str(tmp_path / "nope.env"))
    assert result.returncode == EXIT_CONFIG
    assert "--env-file" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_env_file_stops_start_up(tmp_path: Path) -> None:
    env_file = tmp_path / "broken.env"
    env_file.write_text("oops\n", encoding="utf-8")
    result = run_cli("--port", "0", "--env-file", str(env_file))
    assert result.returncode == EXIT_CONFIG
    assert "listening" not in result.stdout


# --- the running server ---


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Any]:
    """Start gateway subprocesses; every one is killed and reaped at the end of the test."""
    started: list[Gateway] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Gateway:
        gateway = Gateway(
            list(args),
            clean_env() if env is None else env,
            tmp_path / f"stderr-{len(started)}.log",
        )
        started.append(gateway)
        return gateway

    try:
        yield start
    finally:
        for gateway in started:
            gateway.close()


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url: str, key: str | None = None, body: Any = None) -> tuple[int, dict[str, str], bytes]:
    """One request to the local gateway (never through a proxy); never raises on a status."""
    assert url.startswith("http://127.0.0.1:")
    headers = {}
    data = None
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with _NO_PROXY.open(request, timeout=RUN_TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def png_size(data: bytes) -> tuple[int, int]:
    """The IHDR width and height of a PNG, after checking the signature and the IHDR CRC."""
    assert data[:8] == PNG_SIGNATURE, data[:16]
    (length,) = struct.unpack(">I", data[8:12])
    assert data[12:16] == b"IHDR"
    assert length == 13
    payload = data[16 : 16 + length]
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert crc == zlib.crc32(b"IHDR" + payload)
    width, height = struct.unpack(">II", payload[:8])
    return width, height


def test_embedded_default_end_to_end(start_gateway: Any) -> None:
    gateway = start_gateway("--port", "0")
    deadline = time.monotonic() + START_DEADLINE
    match, lines = gateway.read_until(r"listening on 127\.0\.0\.1:(\d+)\s*$", deadline)
    port = int(match.group(1))
    assert 0 < port < 65536
    base = f"http://127.0.0.1:{port}"
    key_match, more = gateway.read_until(r"^\s+(sk-imagegate-\S+)\s*$", deadline)
    key = key_match.group(1)
    welcome = "\n".join(lines + more)
    assert f"{base}/" in welcome
    assert "imagegate-demo" in welcome
    assert welcome.count(key) == 1

    status, headers, body = http(f"{base}/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert b"imagegate-demo" in body

    status, _, body = http(f"{base}/health")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}

    status, _, body = http(f"{base}/v1/models", key=key)
    assert status == 200
    models = json.loads(body)
    assert models["object"] == "list"
    assert [entry["id"] for entry in models["data"]] == ["imagegate-demo"]

    for wrong in (None, "sk-imagegate-wrong"):
        status, _, body = http(f"{base}/v1/models", key=wrong)
        assert status == 401
        assert json.loads(body)["error"]["code"] == "invalid_api_key"

    chat = {
        "model": "imagegate-demo",
        "messages": [{"role": "user", "content": "a lighthouse in a storm, 16:9"}],
    }
    status, _, body = http(f"{base}/v1/chat/completions", key=key, body=chat)
    assert status == 200, body
    completion = json.loads(body)
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "imagegate-demo"
    assert completion["choices"][0]["finish_reason"] == "stop"
    message = completion["choices"][0]["message"]
    assert message["role"] == "assistant"
    image = re.fullmatch(
        r"!\[([^\]]*)\]\((http://127\.0\.0\.1:(\d+)/image-proxy\?id=[^)\s]+)\)",
        message["content"].strip(),
    )
    assert image, message["content"]
    assert "lighthouse" in image.group(1)
    assert int(image.group(3)) == port

    status, headers, data = http(image.group(2))
    assert status == 200
    assert headers["Content-Type"] == "image/png"
    assert png_size(data) == (1024, 576)

    status, _, _ = http(f"{base}/v1/chat/completions", body=chat)
    assert status == 401

    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=STOP_DEADLINE) == 0
    log = gateway.stderr()
    assert key not in log
    assert "Traceback" not in log
    assert "event loop: uvloop" in log  # the installed dependency is the loop it ran on


def test_event_loop_asyncio_runs_the_gateway_on_asyncio(start_gateway: Any) -> None:
    gateway = start_gateway("--port", "0", env=clean_env(EVENT_LOOP="asyncio"))
    base = gateway.wait_listening(START_DEADLINE)
    status, _, body = http(f"{base}/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=STOP_DEADLINE) == 0
    assert "event loop: asyncio" in gateway.stderr()


def test_port_already_in_use(start_gateway: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        gateway = start_gateway("--host", "127.0.0.1", "--port", str(port))
        status = gateway.process.wait(timeout=RUN_TIMEOUT)
    gateway.reader.join(timeout=STOP_DEADLINE)
    stdout = []
    while not gateway.lines.empty():
        line = gateway.lines.get_nowait()
        if line is not None:
            stdout.append(line)
    stderr = gateway.stderr()
    assert status != 0
    assert f"127.0.0.1:{port}" in stderr
    assert "cannot listen" in stderr
    assert "Traceback" not in stderr
    assert not any("listening" in line for line in stdout)
    assert not any("sk-imagegate-" in line for line in stdout)


def test_check_config_to_a_reader_that_stopped_is_no_error() -> None:
    """``imagegate --check-config | head -1``: the closed pipe is not a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already gone when the report is written
    try:
        result = subprocess.run(
            [*COMMAND, "--check-config"],
            env=clean_env(),
            cwd=NEUTRAL_CWD,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr


def test_check_config_writes_seconds_as_they_can_be_written_back() -> None:
    result = run_cli("--check-config")
    assert "2592000 s (REDIS_IMAGE_TTL_SECONDS)" in result.stdout
    assert "e+" not in result.stdout
