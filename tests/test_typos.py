"""Near misses of the gateway's variable names: named with the real name, never with a value."""

from __future__ import annotations

import os

import pytest
from processes import Gateway, clean_env
from test_cli import EXIT_CONFIG, run_cli

from tornado_imagegate.config import ConfigError, load_settings
from tornado_imagegate.options import group_variables, option_names
from tornado_imagegate.typos import closest_variable, near_misses, without_gateway_variables

TYPO_SECRET = "sk-typo-secret-5c1d"


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("IMAGE_GEN_KIND2", "IMAGE_GEN_KIND_2"),
        ("IMAGE_GEN_MODEL12", "IMAGE_GEN_MODEL_12"),
        ("IMAGE_GEN_MODELS_1", "IMAGE_GEN_MODEL_1"),
        ("IMAGE_GEN_API_BSAE_3", "IMAGE_GEN_API_BASE_3"),
        ("AUTHORISED_API_KEY", "AUTHORIZED_API_KEY"),
        ("FLUX_GEN_MODELS", "FLUX_GEN_MODEL"),
        ("FLUX_GEN_MODEL_1", "FLUX_GEN_MODEL"),
        ("SD_API_KEYS", "SD_API_KEY"),
        ("OPENAI_API_KEY_2", "OPENAI_API_KEY"),
        ("OPENAI_MODEL_RESONING", "OPENAI_MODEL_REASONING"),
        ("ENHANCE_OPENAI_MODLE", "ENHANCE_OPENAI_MODEL"),
        ("IMAGEGATE_PROT", "IMAGEGATE_PORT"),
        ("log_level", "LOG_LEVEL"),
        ("image_gen_model_1", "IMAGE_GEN_MODEL_1"),
        ("KEY_ALLOWED_FAIL", "KEY_ALLOWED_FAILS"),
        ("IMAGE_CACHE_MAX_BYTE", "IMAGE_CACHE_MAX_BYTES"),
    ],
)
def test_a_near_miss_is_named_with_the_closest_real_name(typo: str, meant: str) -> None:
    assert closest_variable(typo) == meant
    assert near_misses({typo: "x"}) == [
        f"{typo}: not a variable the gateway reads; did you mean {meant}?"
    ]


@pytest.mark.parametrize("name", ["IMAGEGATE_THEME", "FLUX_GEN_STEPS", "IMAGE_GEN_SIZE_1"])
def test_an_unknown_name_under_the_gateways_own_prefixes_is_reported(name: str) -> None:
    assert closest_variable(name) is None
    (message,) = near_misses({name: "x"})
    assert message.startswith(f"{name}: not a variable the gateway reads")


@pytest.mark.parametrize(
    "name",
    [
        "OPENAI_ORG_ID",
        "OPENAI_BASE_URL",
        "OPENAI_PROJECT_ID",
        "OPENAI_API_TYPE",
        "OPENAI_API_VERSION",
        "AZURE_OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "IMAGE_MAGICK_HOME",
        "IMAGE_NAME",
        "SD_CARD",
        "SD_WEBUI_HOME",
        "HTTPS_PROXY",
        "https_proxy",
        "NO_PROXY",
        "CREDENTIALS_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "PATH",
        "HOME",
        "HOSTNAME",
        "PORT",
        "LOG_FORMAT",
        "PYTHONPATH",
        "VIRTUAL_ENV",
    ],
)
def test_other_programs_variables_are_not_near_misses(name: str) -> None:
    assert closest_variable(name) is None
    assert near_misses({name: "some value"}) == []


def test_real_names_are_never_near_misses() -> None:
    names = [*option_names(), *group_variables("1"), *group_variables("17"), "IMAGE_GEN_KIND_01"]
    assert near_misses(dict.fromkeys(names, "x")) == []


def test_a_near_miss_set_to_nothing_is_left_alone() -> None:
    assert near_misses({"IMAGE_GEN_KIND2": "", "AUTHORISED_API_KEY": "  "}) == []


def test_this_machines_environment_is_cleared_for_gateway_subprocesses() -> None:
    cleared = without_gateway_variables({**os.environ, "IMAGE_GEN_KIND2": "sd", "LOG_LEVEL": "x"})
    assert near_misses(cleared) == []
    assert "IMAGE_GEN_KIND2" not in cleared and "LOG_LEVEL" not in cleared
    assert cleared.get("PATH") == os.environ.get("PATH")


# --- in the configuration ---


def test_a_near_miss_is_a_warning_and_the_configuration_loads() -> None:
    settings = load_settings({"AUTHORISED_API_KEY": TYPO_SECRET, "SD_API_KEY": "sk-sd"})
    assert settings.client_keys == ()
    assert settings.warnings == (
        "AUTHORISED_API_KEY: not a variable the gateway reads; did you mean AUTHORIZED_API_KEY?",
    )


def test_a_near_miss_is_a_problem_when_strict() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"IMAGE_GEN_KIND2": "sd"}, strict=True)
    assert info.value.problems == [
        "IMAGE_GEN_KIND2: not a variable the gateway reads; did you mean IMAGE_GEN_KIND_2?"
    ]


def test_a_near_miss_joins_the_problems_of_a_broken_configuration() -> None:
    """The typo is likely why the group is incomplete: say both."""
    env = {
        "IMAGE_GEN_MODELS_1": "m1",
        "IMAGE_GEN_API_BASE_1": "https://img.example.com/v1",
        "IMAGE_GEN_API_KEY_1": TYPO_SECRET,
    }
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    problems = info.value.problems
    assert problems[0].startswith("IMAGE_GEN_MODEL_1: missing")
    assert problems[1].endswith("did you mean IMAGE_GEN_MODEL_1?")
    assert TYPO_SECRET not in str(info.value)


# --- the command ---


def test_check_config_counts_a_near_miss_as_a_problem() -> None:
    env = clean_env(AUTHORISED_API_KEY=TYPO_SECRET, OPENAI_ORG_ID="org-not-ours")
    result = run_cli("--check-config", env=env)
    assert result.returncode == EXIT_CONFIG
    assert "1 problem:" in result.stderr
    assert (
        "AUTHORISED_API_KEY: not a variable the gateway reads; did you mean AUTHORIZED_API_KEY?"
        in (result.stderr)
    )
    assert "OPENAI_ORG_ID" not in result.stderr
    assert TYPO_SECRET not in result.stdout + result.stderr


def test_the_readmes_client_key_variable_does_not_stop_check_config() -> None:
    """The quick start has people ``export IMAGEGATE_KEY=...`` for curl, often in the shell
    where they later run ``imagegate --check-config``."""
    env = clean_env(IMAGEGATE_KEY=TYPO_SECRET)
    result = run_cli("--check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert "IMAGEGATE_KEY" not in result.stderr
    assert TYPO_SECRET not in result.stdout + result.stderr


def test_a_near_miss_is_a_warning_in_the_log_at_start_up(tmp_path) -> None:
    env = clean_env(IMAGE_GEN_KIND2="sd", FLUX_GEN_MODELS=TYPO_SECRET)
    gateway = Gateway(["--port", "0"], env, tmp_path / "stderr.log")
    try:
        gateway.wait_listening()  # the warnings are logged before it listens
    finally:
        gateway.close()
    log = gateway.stderr()
    warnings = [line for line in log.splitlines() if "did you mean" in line]
    assert len(warnings) == 2, log
    assert all("WARNING" in line for line in warnings)
    assert any("IMAGE_GEN_KIND2" in line and "IMAGE_GEN_KIND_2?" in line for line in warnings)
    assert any("FLUX_GEN_MODELS" in line and "FLUX_GEN_MODEL?" in line for line in warnings)
    assert TYPO_SECRET not in log
