"""The systemd unit: it verifies, it is hardened, and the credentials it loads reach the gateway."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import register_secret
from processes import COMMAND, NEUTRAL_CWD, clean_env

from tornado_imagegate.server import build_settings, parse_args
from tornado_imagegate.sources import read_credentials

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "imagegate.service"


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this interpreter (verify checks it exists)."""
    text = UNIT.read_text()
    text = re.sub(
        r"^ExecStart=\S+",
        f"ExecStart={shutil.which('python3') or '/bin/true'}",
        text,
        flags=re.MULTILINE,
    )
    path = tmp_path / "imagegate.service"
    path.write_text(text)
    return path


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "imagegate.service" not in result.stderr, result.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_unit_exposure_is_2_or_lower(tmp_path):
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_unit_is_a_notify_service_with_a_watchdog_and_credentials():
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "DynamicUser=yes",
        "StateDirectory=imagegate",
        "StateDirectoryMode=0700",
        "WatchdogSec=",
        "LoadCredential=AUTHORIZED_API_KEY:",
        "PYTHONUNBUFFERED=1",
        "LimitNOFILE=",
    ):
        assert line in text
    # Images that chat histories link to are state: kept in the data directory systemd names in
    # $STATE_DIRECTORY, not in a cache directory systemd may empty.
    assert "CacheDirectory" not in text and "IMAGE_CACHE_DIR" not in text
    # One value sets soft = hard: nothing to raise at start-up, where setrlimit is filtered out.
    limit = re.search(r"^LimitNOFILE=(\d+)$", text, re.MULTILINE)
    assert limit and int(limit.group(1)) >= 65536


def test_systemd_credentials_are_read_and_the_environment_wins(tmp_path):
    (tmp_path / "AUTHORIZED_API_KEY").write_text("cred-client-key-1234\n")
    (tmp_path / "FLUX_GEN_API_KEY").write_text("cred-flux-key-5678")
    (tmp_path / "not a variable").write_text("ignored")
    register_secret("cred-client-key-1234", "cred-flux-key-5678")
    values = read_credentials(str(tmp_path))
    assert values == {
        "AUTHORIZED_API_KEY": "cred-client-key-1234",
        "FLUX_GEN_API_KEY": "cred-flux-key-5678",
    }
    result = subprocess.run(
        [*COMMAND, "--check-config"],
        env=clean_env(
            CREDENTIALS_DIRECTORY=str(tmp_path),
            FLUX_GEN_MODEL="flux",
            FLUX_GEN_API_BASE="https://api.example.com/v1/images/generations",
        ),
        cwd=NEUTRAL_CWD,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "1 client key" in result.stdout and "1 key" in result.stdout
    assert "cred-" not in result.stdout + result.stderr
    (tmp_path / "FLUX_GEN_API_KEY").unlink()
    from_file = build_settings(parse_args([]), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert from_file.client_keys == ("cred-client-key-1234",)
    register_secret("env-wins-key-0000")
    environment = {
        "CREDENTIALS_DIRECTORY": str(tmp_path),
        "AUTHORIZED_API_KEY": "env-wins-key-0000",
    }
    assert build_settings(parse_args([]), environment).client_keys == ("env-wins-key-0000",)
