"""Start-up failures a newcomer meets read as one line saying what to change or install."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import register_secret
from processes import COMMAND, NEUTRAL_CWD, clean_env

RUN_TIMEOUT = 30
CLIENT_KEY = "startup-errors-client-key-5c1e"
register_secret(CLIENT_KEY)


def run_command(
    *args: str, env: dict[str, str], prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``imagegate`` to completion (it is expected to stop by itself), after ``prefix``."""
    return subprocess.run(
        [*prefix, *COMMAND, *args],
        env=env,
        cwd=NEUTRAL_CWD,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def problem_lines(stderr: str) -> list[str]:
    """The lines the command wrote for the user (not its log lines)."""
    return [line for line in stderr.splitlines() if line.startswith("imagegate:")]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_names_the_flag_to_change(workers: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_command(
            "--host", "127.0.0.1", "--port", str(port), "--workers", workers, env=clean_env()
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = problem_lines(result.stderr)
    assert f"127.0.0.1:{port}" in line
    assert "--port" in line and "IMAGEGATE_PORT" in line
    assert "listening" not in result.stdout


def test_an_address_not_of_this_machine_names_the_host_flag() -> None:
    # 192.0.2.0/24 is reserved for documentation: no machine has an address there. The command
    # runs in a private network namespace, as every test naming a non-loopback address does; its
    # loopback is brought up, since with no interface up the kernel lets any address be bound.
    env = clean_env(AUTHORIZED_API_KEY=CLIENT_KEY)
    in_namespace = ("unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh")
    result = run_command("--host", "192.0.2.1", "--port", "0", env=env, prefix=in_namespace)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = problem_lines(result.stderr)
    assert "--host" in line and "IMAGEGATE_HOST" in line
    assert CLIENT_KEY not in result.stderr + result.stdout


def env_with_stub(tmp_path: Path, module: str, source: str) -> dict[str, str]:
    """An environment whose Python finds ``module`` first in a directory holding ``source``."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / f"{module}.py").write_text(source)
    path = os.pathsep.join(p for p in (str(stubs), os.environ.get("PYTHONPATH", "")) if p)
    return clean_env(PYTHONPATH=path)


def test_pycurl_without_libcurl_names_the_system_library_to_install(tmp_path: Path) -> None:
    env = env_with_stub(
        tmp_path,
        "pycurl",
        'raise ImportError("libcurl.so.4: cannot open shared object file: No such file")\n',
    )
    result = run_command("--port", "0", env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = problem_lines(result.stderr)
    assert "libcurl.so.4" in line
    assert "apt install libcurl4" in line
    assert "pip install --force-reinstall" in line and "pycurl" in line


@pytest.mark.parametrize(
    ("module", "package"),
    [("prometheus_client", "prometheus-client"), ("pybase64", "pybase64"), ("orjson", "orjson")],
)
def test_a_missing_python_package_names_the_package_to_install(
    tmp_path: Path, module: str, package: str
) -> None:
    env = env_with_stub(
        tmp_path,
        module,
        f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n",
    )
    result = run_command("--port", "0", env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = problem_lines(result.stderr)
    assert f"pip install {package}" in line
    assert "pip install --force-reinstall tornado-imagegate" in line


def test_check_config_also_names_a_missing_library(tmp_path: Path) -> None:
    env = env_with_stub(tmp_path, "pycurl", 'raise ImportError("libcurl.so.4: not found")\n')
    result = run_command("--check-config", env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "libcurl" in "".join(problem_lines(result.stderr))
