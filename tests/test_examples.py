"""The example configurations under examples/: each is valid, and README.rst shows each as is."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import register_secret
from test_cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
README = (ROOT / "README.rst").read_text(encoding="utf-8")

# Each example: the provider kind and model the report must name, and its placeholder key.
EXPECTED = {
    "siliconflow.env": (
        "kind siliconflow",
        "black-forest-labs/FLUX.1-schnell",
        "sk-your-siliconflow-key",
    ),
    "openrouter.env": ("kind chat", "google/gemini-2.5-flash-image", "sk-or-your-openrouter-key"),
    "openai-images.env": ("kind openai-images", "gpt-image-1", "sk-your-openai-key"),
    "modelscope.env": ("kind modelscope", "Tongyi-MAI/Z-Image-Turbo", "ms-your-modelscope-token"),
    "bfl.env": ("kind bfl", "flux-pro-1.1", "your-bfl-key"),
    "dashscope.env": ("kind dashscope", "wan2.6-t2i", "sk-your-dashscope-key"),
    "sd.env": ("kind sd", "Z-Image", "your-sd-key"),
    "prompt-optimiser.env": ("prompt optimiser: on", "gpt-4o-mini", "sk-your-openai-key"),
}


def check_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    """``imagegate --check-config --env-file env_file``, as the README tells a user to run it."""
    return run_cli("--check-config", "--env-file", str(env_file))


def test_every_example_file_is_checked() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.env")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_is_a_valid_configuration_and_its_key_stays_hidden(name: str) -> None:
    kind, model, placeholder_key = EXPECTED[name]
    register_secret(placeholder_key)
    result = check_config(EXAMPLES / name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration is valid" in result.stdout
    assert kind in result.stdout
    assert model in result.stdout
    assert placeholder_key not in result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_readme_shows_the_example_file_as_it_is(name: str) -> None:
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    block = "".join(f"    {line}\n" for line in text.splitlines())
    assert f"examples/{name}" in README
    assert block in README, f"README.rst does not show examples/{name} as it is"
