"""The provider-kind registry: each kind configurable, sized, built, reported and documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tornado_imagegate.config import ConfigError, ProviderGroup, Settings, load_settings
from tornado_imagegate.generation import make_provider
from tornado_imagegate.openai_api import image_request
from tornado_imagegate.provider_kinds import KINDS, ProviderKind, group_kind_names, provider_kind
from tornado_imagegate.providers.group import GroupProvider
from tornado_imagegate.providers.task_engine import TaskProvider
from tornado_imagegate.report import settings_report
from tornado_imagegate.upstream import Upstream

README = Path(__file__).resolve().parent.parent / "README.rst"
GROUP_KINDS = group_kind_names()
LOCAL_KINDS = [name for name, kind in KINDS.items() if kind.local]
TASK_API_METHODS = (
    "fit_size",
    "images_per_call",
    "submit",
    "read_submission",
    "poll",
    "read_poll",
    "result",
    "read_result",
    "cancel",
)
DEFAULT_BASE_KINDS = [name for name in GROUP_KINDS if provider_kind(name).default_endpoint]


def endpoint_for(kind: ProviderKind) -> str:
    """An endpoint URL of the form the kind calls."""
    return kind.default_endpoint or f"https://img.example.com/v1{kind.endpoint_path}"


def every_group_kind_env() -> dict[str, str]:
    """One IMAGE_GEN_*_n group of each configurable kind, numbered in registry order."""
    env = {}
    for n, name in enumerate(GROUP_KINDS, start=1):
        env.update(
            {
                f"IMAGE_GEN_MODEL_{n}": f"model-{name}",
                f"IMAGE_GEN_API_BASE_{n}": endpoint_for(provider_kind(name)),
                f"IMAGE_GEN_API_KEY_{n}": f"sk-kind-{n}",
                f"IMAGE_GEN_KIND_{n}": name,
            }
        )
    return env


def test_every_kind_but_the_local_ones_is_a_group_kind() -> None:
    assert set(GROUP_KINDS) | set(LOCAL_KINDS) == set(KINDS)
    assert not set(GROUP_KINDS) & set(LOCAL_KINDS)


@pytest.mark.parametrize("name", GROUP_KINDS)
def test_every_group_kind_is_accepted_by_image_gen_kind(name: str) -> None:
    settings = load_settings(
        {
            "IMAGE_GEN_MODEL_1": "m",
            "IMAGE_GEN_API_BASE_1": endpoint_for(provider_kind(name)),
            "IMAGE_GEN_API_KEY_1": "sk-kind-1",
            "IMAGE_GEN_KIND_1": name,
        }
    )
    assert [group.kind for group in settings.groups] == [name, "demo"]


def test_every_local_kind_is_a_built_in_group() -> None:
    assert [group.kind for group in load_settings({}).groups] == LOCAL_KINDS


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_sizes_requests_by_its_ratio_table(name: str) -> None:
    kind = provider_kind(name)
    assert kind.ratios
    for ratio, size in kind.ratios.items():
        request = image_request({}, "m", f"a cat, {ratio}", name)
        assert (request.width, request.height) == size
        assert request.prompt == "a cat"
    plain = image_request({}, "m", "a cat", name)
    assert (plain.width, plain.height) == kind.default_size == kind.ratios["1:1"]


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_builds_its_provider(name: str) -> None:
    kind = provider_kind(name)
    settings = Settings(sd_steps=3, sd_model_index=2)
    group = ProviderGroup(
        name="G", kind=name, models=("m",), endpoint=endpoint_for(kind), keys=("sk-kind-1",)
    )
    provider = make_provider(group, settings, Upstream())
    assert callable(provider.generate)
    if kind.local:
        assert not isinstance(provider, GroupProvider)
        return
    assert isinstance(provider, GroupProvider)
    # A kind that polls is driven by the task engine, which needs a TaskApi.
    assert isinstance(provider, TaskProvider) == kind.polls
    api = provider.api
    methods = TASK_API_METHODS if kind.polls else ("fit_size", "images_per_call", "build", "parse")
    for method in methods:
        assert callable(getattr(api, method)), method
    for argument, setting in kind.settings_fields.items():
        assert getattr(api, argument) == getattr(settings, setting)
    # A kind that takes n natively asks for several images in one request.
    assert (api.images_per_call("some-model") > 1) == kind.native_n


def test_sd_settings_reach_its_api() -> None:
    group = ProviderGroup(name="SD", kind="sd", models=("m",), endpoint="https://sd.example/x")
    api = make_provider(group, Settings(sd_steps=3, sd_model_index=2), Upstream()).api
    assert (api.steps, api.model_index) == (3, 2)


def test_sd_default_endpoint_is_the_one_configuration_uses() -> None:
    group = load_settings({"SD_API_KEY": "sk-sd-1"}).groups[0]
    assert group.endpoint == provider_kind("sd").default_endpoint


@pytest.mark.parametrize("name", DEFAULT_BASE_KINDS)
def test_a_kind_with_an_official_base_needs_no_api_base(name: str) -> None:
    settings = load_settings(
        {"IMAGE_GEN_MODEL_1": "m", "IMAGE_GEN_API_KEY_1": "sk-kind-1", "IMAGE_GEN_KIND_1": name}
    )
    kind = provider_kind(name)
    group = next(group for group in settings.groups if group.name == "IMAGE_GEN_1")
    assert group.endpoint.startswith(kind.default_endpoint)
    assert group.endpoint.endswith(kind.endpoint_path)


def test_a_kind_without_an_official_base_still_needs_one() -> None:
    with pytest.raises(ConfigError, match="IMAGE_GEN_API_BASE_1: missing"):
        load_settings(
            {
                "IMAGE_GEN_MODEL_1": "m",
                "IMAGE_GEN_API_KEY_1": "sk-kind-1",
                "IMAGE_GEN_KIND_1": "chat",
            }
        )


def test_report_says_which_groups_poll() -> None:
    lines = settings_report(load_settings(every_group_kind_env())).splitlines()
    for n, name in enumerate(GROUP_KINDS, start=1):
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"IMAGE_GEN_{n}:"))
        expected = "answers: with a task, polled" if KINDS[name].polls else "answers: at once"
        assert lines[at + 1].strip().startswith(expected), name


def test_report_says_what_each_kind_is() -> None:
    lines = settings_report(load_settings(every_group_kind_env())).splitlines()
    for n, name in enumerate(GROUP_KINDS, start=1):
        line = next(line for line in lines if line.strip().startswith(f"IMAGE_GEN_{n}:"))
        assert f"kind {name} ({provider_kind(name).description})," in line
    for name in LOCAL_KINDS:
        assert f"  {name}: {provider_kind(name).description}" in lines


def test_readme_documents_every_kind_and_no_other() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("\nProvider kinds: ", 1)[1].split("\nEvery image a provider returns", 1)[0]
    documented = re.findall(r"^``([a-z0-9-]+)``", section, re.MULTILINE)
    assert sorted(documented) == sorted(KINDS)
