"""Unit tests of tornado_imagegate.config: every variable, every problem, never a secret."""

from __future__ import annotations

import re

import pytest

from tornado_imagegate.config import (
    DEMO_MODEL,
    ConfigError,
    ProviderGroup,
    Settings,
    is_loopback_host,
    load_settings,
)
from tornado_imagegate.options import DEFAULT_SD_API_BASE, DEFAULT_SD_MODEL
from tornado_imagegate.report import problems_report
from tornado_imagegate.values import redact_url, split_list

FLUX = {
    "FLUX_GEN_MODEL": "black-forest-labs/FLUX.1-schnell",
    "FLUX_GEN_API_BASE": "https://api.siliconflow.cn/v1/images/generations",
    "FLUX_GEN_API_KEY": "sk-flux-key-1",
}


def group_env(n: int | str, model: str, kind: str | None = None) -> dict[str, str]:
    """A complete IMAGE_GEN_*_n group, its API_BASE a base URL (right for every kind)."""
    env = {
        f"IMAGE_GEN_MODEL_{n}": model,
        f"IMAGE_GEN_API_BASE_{n}": f"https://img{n}.example.com/v1",
        f"IMAGE_GEN_API_KEY_{n}": f"sk-group-{n}",
    }
    if kind is not None:
        env[f"IMAGE_GEN_KIND_{n}"] = kind
    return env


def problems_of(environ: dict[str, str]) -> list[str]:
    """The problems load_settings reports for ``environ`` (it must refuse it)."""
    with pytest.raises(ConfigError) as info:
        load_settings(environ)
    problems = info.value.problems
    assert problems
    assert str(info.value) == "; ".join(problems)
    return problems


def one_problem(environ: dict[str, str]) -> str:
    problems = problems_of(environ)
    assert len(problems) == 1, problems
    return problems[0]


# --- defaults ---


def test_defaults_with_empty_environ() -> None:
    settings = load_settings({})
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.model_ids == [DEMO_MODEL] == ["imagegate-demo"]
    assert [g.kind for g in settings.groups] == ["demo"]
    assert settings.optimiser.enabled is False
    assert settings.optimiser.model == ""
    assert settings.image_cache_max_bytes == 268435456
    assert settings.image_cache_dir == ""
    assert settings.llm_timeout == 30
    assert settings.image_gen_timeout == 180
    assert settings.image_fetch_timeout == 30
    assert settings.sse_keepalive_seconds == 10
    assert settings.cors_allow_origins == ("*",)
    assert settings.client_keys == ()
    assert settings.client_keys_generated is False
    assert settings.image_proxy_allow_private_networks is False
    assert settings.public_base_url == ""
    assert settings.log_level == "INFO"
    assert settings.upstream_max_clients > 10


def test_blank_values_count_as_unset() -> None:
    settings = load_settings({"IMAGEGATE_PORT": "  ", "LLM_TIMEOUT": "", "FLUX_GEN_MODEL": " "})
    assert settings.port == 8080
    assert settings.llm_timeout == 30
    assert settings.model_ids == [DEMO_MODEL]


def test_settings_are_frozen() -> None:
    settings = load_settings({})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


# --- FLUX_GEN group ---


def test_flux_group_loads_with_all_three() -> None:
    settings = load_settings(
        {
            "FLUX_GEN_MODEL": " flux-a , flux-b,,",
            "FLUX_GEN_API_BASE": "https://api.siliconflow.cn/v1/images/generations",
            "FLUX_GEN_API_KEY": "k1, k2 ,k3",
        }
    )
    group = settings.groups[0]
    assert group.name == "FLUX_GEN"
    assert group.kind == "siliconflow"
    assert group.models == ("flux-a", "flux-b")
    assert group.keys == ("k1", "k2", "k3")
    assert group.endpoint == "https://api.siliconflow.cn/v1/images/generations"
    assert settings.model_ids == ["flux-a", "flux-b", DEMO_MODEL]
    assert settings.group_for("flux-b") is group
    assert settings.group_for("nope") is None


@pytest.mark.parametrize(
    "missing",
    [
        ("FLUX_GEN_MODEL",),
        ("FLUX_GEN_API_BASE",),
        ("FLUX_GEN_API_KEY",),
        ("FLUX_GEN_API_BASE", "FLUX_GEN_API_KEY"),
        ("FLUX_GEN_MODEL", "FLUX_GEN_API_KEY"),
    ],
)
def test_partial_flux_group_names_missing_variables(missing: tuple[str, ...]) -> None:
    env = {k: v for k, v in FLUX.items() if k not in missing}
    problem = one_problem(env)
    for name in missing:
        assert name in problem
    assert problem.startswith(missing[0])
    assert "sk-flux-key-1" not in problem


@pytest.mark.parametrize("url", ["not a url", "ftp://files.example.com/x", "https://[::1/x"])
def test_flux_group_bad_endpoint_is_a_problem(url: str) -> None:
    problem = one_problem({**FLUX, "FLUX_GEN_API_BASE": url})
    assert problem.startswith("FLUX_GEN_API_BASE")


@pytest.mark.parametrize("url", ["https://h:abc/x", "https://h:99999/x"])
def test_endpoint_with_bad_port_is_a_problem(url: str) -> None:
    problem = one_problem({**FLUX, "FLUX_GEN_API_BASE": url})
    assert problem.startswith("FLUX_GEN_API_BASE")


# --- IMAGE_GEN_*_n groups ---


def test_image_gen_group_number_with_leading_zero_loads_under_its_own_name() -> None:
    settings = load_settings(group_env("01", "m01"))
    assert [g.name for g in settings.groups] == ["IMAGE_GEN_01", "demo"]


def test_image_gen_groups_with_a_gap_load_in_numeric_order() -> None:
    env = {**group_env(15, "m15"), **group_env(1, "m1"), **group_env(2, "m2")}
    settings = load_settings(env)
    assert [g.name for g in settings.groups] == [
        "IMAGE_GEN_1",
        "IMAGE_GEN_2",
        "IMAGE_GEN_15",
        "demo",
    ]
    assert settings.model_ids == ["m1", "m2", "m15", DEMO_MODEL]


def test_image_gen_groups_sort_numerically_not_as_strings() -> None:
    env = {**group_env(10, "ten"), **group_env(2, "two")}
    settings = load_settings(env)
    assert settings.model_ids == ["two", "ten", DEMO_MODEL]


def test_image_gen_group_has_no_upper_limit() -> None:
    settings = load_settings(group_env(57, "m57"))
    group = settings.groups[0]
    assert group.name == "IMAGE_GEN_57"
    assert group.models == ("m57",)
    assert group.keys == ("sk-group-57",)
    assert group.endpoint == "https://img57.example.com/v1/chat/completions"
    assert group.model_variable == "IMAGE_GEN_MODEL_57"


def test_image_gen_group_fields_are_split_and_stripped() -> None:
    env = group_env(1, " a , b ")
    env["IMAGE_GEN_API_KEY_1"] = "k1 , k2"
    group = load_settings(env).groups[0]
    assert group.models == ("a", "b")
    assert group.keys == ("k1", "k2")


def test_image_gen_group_base_without_key_names_the_key_variable() -> None:
    env = group_env(3, "m3")
    del env["IMAGE_GEN_API_KEY_3"]
    problem = one_problem(env)
    assert problem.startswith("IMAGE_GEN_API_KEY_3")
    assert "IMAGE_GEN_3" in problem


def test_image_gen_group_key_without_base_or_model_names_both() -> None:
    problem = one_problem({"IMAGE_GEN_API_KEY_4": "sk-lonely-key"})
    assert "IMAGE_GEN_MODEL_4" in problem
    assert "IMAGE_GEN_API_BASE_4" in problem
    assert "sk-lonely-key" not in problem


def test_incomplete_group_does_not_hide_a_later_complete_one() -> None:
    env = {**group_env(1, "m1"), **group_env(2, "m2")}
    del env["IMAGE_GEN_API_KEY_1"]
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert [g.name for g in info.value.groups] == ["IMAGE_GEN_2", "demo"]


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("chat", "chat"),
        ("openai-images", "openai-images"),
        ("siliconflow", "siliconflow"),
        ("sd", "sd"),
        ("CHAT", "chat"),
        ("OpenAI-Images", "openai-images"),
        ("SiliconFlow", "siliconflow"),
        ("SD", "sd"),
        (" sd ", "sd"),
    ],
)
def test_image_gen_kind_accepted_case_insensitive(value: str, kind: str) -> None:
    settings = load_settings(group_env(1, "m", kind=value))
    assert settings.groups[0].kind == kind


def test_image_gen_kind_defaults_to_chat() -> None:
    assert load_settings(group_env(1, "m")).groups[0].kind == "chat"


@pytest.mark.parametrize("value", ["dalle", "open-ai", "demo", "flux"])
def test_image_gen_kind_rejects_others_naming_the_variable(value: str) -> None:
    problem = one_problem(group_env(7, "m", kind=value))
    assert problem.startswith("IMAGE_GEN_KIND_7")


# --- base URL or full endpoint ---


@pytest.mark.parametrize(
    ("kind", "given", "endpoint"),
    [
        ("chat", "https://p.io/v1", "https://p.io/v1/chat/completions"),
        ("chat", "https://p.io/v1/", "https://p.io/v1/chat/completions"),
        ("chat", "https://p.io/v1/chat/completions", "https://p.io/v1/chat/completions"),
        ("openai-images", "https://p.io/v1", "https://p.io/v1/images/generations"),
        (
            "openai-images",
            "https://p.io/v1/images/generations/",
            "https://p.io/v1/images/generations/",
        ),
        ("siliconflow", "https://p.io/v1", "https://p.io/v1/images/generations"),
        ("siliconflow", "https://p.io", "https://p.io/images/generations"),
        ("sd", "https://p.io/api/v1/generate_image", "https://p.io/api/v1/generate_image"),
        ("sd", "https://p.io/gen", "https://p.io/gen"),
        ("sd", "https://p.io/v1", "https://p.io/v1"),
        ("chat", "https://p.io/api/generate", "https://p.io/api/generate"),
        ("chat", "https://p.io/openai", "https://p.io/openai/chat/completions"),
        ("openai-images", "https://p.io/api/v3", "https://p.io/api/v3/images/generations"),
        (
            "openai-images",
            "https://p.io/v1?api-version=2024",
            "https://p.io/v1/images/generations?api-version=2024",
        ),
    ],
)
def test_api_base_may_be_the_base_or_the_endpoint(kind: str, given: str, endpoint: str) -> None:
    env = {**group_env(1, "m", kind=kind), "IMAGE_GEN_API_BASE_1": given}
    assert load_settings(env).groups[0].endpoint == endpoint


def test_flux_gen_api_base_may_be_the_base() -> None:
    group = load_settings({**FLUX, "FLUX_GEN_API_BASE": "https://api.siliconflow.cn/v1"}).groups[0]
    assert group.endpoint == "https://api.siliconflow.cn/v1/images/generations"


def test_an_endpoint_of_another_shape_is_called_as_written() -> None:
    """The Flux gateway's own example endpoint keeps working."""
    url = "https://api.flux.example.com/v1/images/generate"
    assert load_settings({**FLUX, "FLUX_GEN_API_BASE": url}).groups[0].endpoint == url


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("chat", "/v1/images/generations"),
        ("chat", "/v1/embeddings"),
        ("openai-images", "/v1/chat/completions"),
        ("siliconflow", "/v1/chat/completions"),
        ("siliconflow", "/v1/images/edits"),
        ("sd", "/v1/chat/completions"),
    ],
)
def test_api_base_naming_another_api_is_refused(kind: str, path: str) -> None:
    url = f"https://user:SECRET123@p.example{path}?key=SECRET123"
    problem = one_problem({**group_env(2, "m", kind=kind), "IMAGE_GEN_API_BASE_2": url})
    assert problem.startswith("IMAGE_GEN_API_BASE_2: ends with /")
    assert f"(kind {kind})" in problem
    assert "SECRET123" not in problem


def test_flux_gen_pointed_at_chat_is_refused() -> None:
    env = {**FLUX, "FLUX_GEN_API_BASE": "https://api.siliconflow.cn/v1/chat/completions"}
    problem = one_problem(env)
    assert problem.startswith("FLUX_GEN_API_BASE: ends with /chat/completions")


# --- SD group ---


def test_sd_key_alone_gives_defaults() -> None:
    settings = load_settings({"SD_API_KEY": "sk-sd-1"})
    group = settings.groups[0]
    assert group.name == "SD"
    assert group.kind == "sd"
    assert group.models == (DEFAULT_SD_MODEL,) == ("Z-Image",)
    assert group.endpoint == DEFAULT_SD_API_BASE == "https://sd.exacg.cc/api/v1/generate_image"
    assert group.keys == ("sk-sd-1",)
    assert settings.model_ids == ["Z-Image", DEMO_MODEL]


def test_sd_model_and_base_override() -> None:
    settings = load_settings(
        {
            "SD_API_KEY": "sk-sd-1",
            "SD_MODEL": "my-sd",
            "SD_API_BASE": "https://sd.example.org/generate",
        }
    )
    group = settings.groups[0]
    assert group.models == ("my-sd",)
    assert group.endpoint == "https://sd.example.org/generate"


def test_provider_origins_are_those_of_every_groups_endpoint() -> None:
    settings = load_settings(
        {
            "SD_API_KEY": "sk-sd-1",
            "SD_API_BASE": "http://127.0.0.1:9102/api/v1/generate_image",
            "IMAGE_GEN_MODEL_1": "chat-test",
            "IMAGE_GEN_API_BASE_1": "https://img57.example.com/v1",
            "IMAGE_GEN_API_KEY_1": "sk-chat-1",
        }
    )
    assert settings.provider_origins == {"http://127.0.0.1:9102", "https://img57.example.com:443"}


@pytest.mark.parametrize(
    "env", [{"SD_MODEL": "my-sd"}, {"SD_API_BASE": "https://sd.example.org/generate"}]
)
def test_sd_settings_without_key_name_sd_api_key(env: dict[str, str]) -> None:
    assert one_problem(env).startswith("SD_API_KEY")


# --- the unnumbered IMAGE_GEN group ---

IMAGE_GEN = {
    "IMAGE_GEN_MODEL": "direct-model",
    "IMAGE_GEN_API_BASE": "https://direct.example.com/v1",
    "IMAGE_GEN_API_KEY": "sk-direct-1",
}


def test_unnumbered_image_gen_group_loads_as_its_own_group() -> None:
    settings = load_settings({**IMAGE_GEN, **group_env(1, "m1"), **FLUX})
    assert [g.name for g in settings.groups] == ["FLUX_GEN", "IMAGE_GEN", "IMAGE_GEN_1", "demo"]
    assert settings.groups[1] == ProviderGroup(
        name="IMAGE_GEN",
        kind="chat",
        models=("direct-model",),
        endpoint="https://direct.example.com/v1/chat/completions",
        keys=("sk-direct-1",),
        model_variable="IMAGE_GEN_MODEL",
    )


def test_unnumbered_image_gen_group_takes_a_kind() -> None:
    group = load_settings({**IMAGE_GEN, "IMAGE_GEN_KIND": "openai-images"}).groups[0]
    assert group.kind == "openai-images"
    assert group.endpoint == "https://direct.example.com/v1/images/generations"


@pytest.mark.parametrize("missing", ["IMAGE_GEN_MODEL", "IMAGE_GEN_API_BASE", "IMAGE_GEN_API_KEY"])
def test_partial_unnumbered_image_gen_group_names_what_is_missing(missing: str) -> None:
    env = {name: value for name, value in IMAGE_GEN.items() if name != missing}
    problem = one_problem(env)
    assert problem.startswith(f"{missing}: missing; group IMAGE_GEN needs ")
    assert "sk-direct-1" not in problem


# --- model order and uniqueness ---


def test_model_order_flux_then_groups_then_sd_then_demo() -> None:
    env = {
        **FLUX,
        "FLUX_GEN_MODEL": "flux-a,flux-b",
        **group_env(10, "g10"),
        **group_env(2, "g2a,g2b"),
        "SD_API_KEY": "sk-sd",
    }
    settings = load_settings(env)
    assert settings.model_ids == ["flux-a", "flux-b", "g2a", "g2b", "g10", "Z-Image", DEMO_MODEL]
    assert [g.name for g in settings.groups] == [
        "FLUX_GEN",
        "IMAGE_GEN_2",
        "IMAGE_GEN_10",
        "SD",
        "demo",
    ]


def test_duplicate_model_within_one_list() -> None:
    problem = one_problem({**FLUX, "FLUX_GEN_MODEL": "dup,other,dup"})
    assert "'dup'" in problem
    assert problem.count("FLUX_GEN_MODEL") == 2


def test_duplicate_model_across_two_groups() -> None:
    env = {**FLUX, "FLUX_GEN_MODEL": "shared", **group_env(3, "x,shared")}
    problem = one_problem(env)
    assert "'shared'" in problem
    assert "FLUX_GEN_MODEL" in problem
    assert "IMAGE_GEN_MODEL_3" in problem


def test_duplicate_model_across_image_gen_groups() -> None:
    env = {**group_env(1, "same"), **group_env(2, "same")}
    problem = one_problem(env)
    assert "'same'" in problem
    assert "IMAGE_GEN_MODEL_1" in problem
    assert "IMAGE_GEN_MODEL_2" in problem


def test_configured_demo_model_id_is_a_duplicate() -> None:
    problem = one_problem({"SD_API_KEY": "sk-sd", "SD_MODEL": DEMO_MODEL})
    assert repr(DEMO_MODEL) in problem
    assert "SD_MODEL" in problem
    assert "demo" in problem


# --- prompt optimiser ---

OPTIMISER = {
    "OPENAI_API_BASE": "https://llm.example.com/v1/",
    "OPENAI_API_KEY": "sk-llm-1, sk-llm-2",
}


def test_both_optimiser_models_is_a_problem_naming_both() -> None:
    problem = one_problem({**OPTIMISER, "OPENAI_MODEL": "a", "OPENAI_MODEL_REASONING": "b"})
    assert re.search(r"\bOPENAI_MODEL\b", problem)
    assert "OPENAI_MODEL_REASONING" in problem


@pytest.mark.parametrize("model_var", ["OPENAI_MODEL", "OPENAI_MODEL_REASONING"])
@pytest.mark.parametrize("missing", ["OPENAI_API_BASE", "OPENAI_API_KEY"])
def test_optimiser_model_without_base_or_key(model_var: str, missing: str) -> None:
    env = {k: v for k, v in OPTIMISER.items() if k != missing}
    env[model_var] = "some-model"
    problem = one_problem(env)
    assert problem.startswith(missing)
    assert model_var in problem
    assert "sk-llm-1" not in problem


def test_optimiser_plain_model() -> None:
    optimiser = load_settings({**OPTIMISER, "OPENAI_MODEL": "gpt-4o-mini"}).optimiser
    assert optimiser.enabled
    assert optimiser.model == "gpt-4o-mini"
    assert optimiser.reasoning is False
    assert optimiser.keys == ("sk-llm-1", "sk-llm-2")
    assert optimiser.endpoint == "https://llm.example.com/v1/chat/completions"


def test_optimiser_reasoning_model() -> None:
    optimiser = load_settings({**OPTIMISER, "OPENAI_MODEL_REASONING": "deepseek-r1"}).optimiser
    assert optimiser.enabled
    assert optimiser.model == "deepseek-r1"
    assert optimiser.reasoning is True


def test_optimiser_base_and_key_without_model_is_off() -> None:
    assert load_settings(OPTIMISER).optimiser.enabled is False


def test_optimiser_base_with_query_is_refused_without_echo() -> None:
    env = {
        **OPTIMISER,
        "OPENAI_MODEL": "m",
        "OPENAI_API_BASE": "https://llm.example/v1?key=QSECRET",
    }
    problem = one_problem(env)
    assert problem.startswith("OPENAI_API_BASE")
    assert "QSECRET" not in problem


@pytest.mark.parametrize(
    ("given", "endpoint"),
    [
        ("https://llm.example.com/v1", "https://llm.example.com/v1/chat/completions"),
        ("https://llm.example.com/v1/", "https://llm.example.com/v1/chat/completions"),
        ("https://llm.example.com", "https://llm.example.com/chat/completions"),
        ("https://llm.example.com/api/v3", "https://llm.example.com/api/v3/chat/completions"),
        (
            "https://llm.example.com/v1beta/openai",
            "https://llm.example.com/v1beta/openai/chat/completions",
        ),
        (
            "https://llm.example.com/v1/chat/completions",
            "https://llm.example.com/v1/chat/completions",
        ),
        (
            "https://llm.example.com/v1/chat/completions/",
            "https://llm.example.com/v1/chat/completions",
        ),
        ("https://llm.example.com/llm/complete", "https://llm.example.com/llm/complete"),
    ],
)
def test_optimiser_base_may_be_the_base_or_the_endpoint(given: str, endpoint: str) -> None:
    env = {**OPTIMISER, "OPENAI_API_BASE": given, "OPENAI_MODEL": "m"}
    assert load_settings(env).optimiser.endpoint == endpoint


@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/embeddings", "/v1/completions"])
def test_optimiser_base_naming_another_api_is_refused(path: str) -> None:
    env = {**OPTIMISER, "OPENAI_MODEL": "m", "OPENAI_API_BASE": f"https://llm.example.com{path}"}
    problem = one_problem(env)
    assert problem.startswith("OPENAI_API_BASE: ends with /")
    assert "/chat/completions" in problem


# --- aliases ---

ENHANCE = {
    "ENHANCE_OPENAI_API_BASE": "https://enhance.example.com/v1",
    "ENHANCE_OPENAI_API_KEY": "sk-enhance-1",
    "ENHANCE_OPENAI_MODEL": "enhance-model",
}


def test_enhance_aliases_configure_the_optimiser() -> None:
    settings = load_settings(ENHANCE)
    assert settings.optimiser.model == "enhance-model"
    assert settings.optimiser.reasoning is False
    assert settings.optimiser.keys == ("sk-enhance-1",)
    assert settings.optimiser.endpoint == "https://enhance.example.com/v1/chat/completions"
    assert settings.warnings == ()


def test_a_name_and_its_alias_set_alike_need_no_word() -> None:
    settings = load_settings({**ENHANCE, "OPENAI_MODEL": "enhance-model"})
    assert settings.warnings == ()


def test_the_name_wins_over_its_alias_with_a_warning_naming_both() -> None:
    env = {**ENHANCE, "OPENAI_MODEL": "plain-model", "OPENAI_API_KEY": "sk-plain-1"}
    settings = load_settings(env)
    assert settings.optimiser.model == "plain-model"
    assert settings.optimiser.keys == ("sk-plain-1",)
    assert settings.optimiser.endpoint == "https://enhance.example.com/v1/chat/completions"
    assert settings.warnings == (
        "ENHANCE_OPENAI_MODEL and OPENAI_MODEL are both set, to different values: "
        "OPENAI_MODEL is used",
        "ENHANCE_OPENAI_API_KEY and OPENAI_API_KEY are both set, to different values: "
        "OPENAI_API_KEY is used",
    )
    assert "sk-" not in " ".join(settings.warnings)


def test_a_problem_names_the_alias_that_was_set() -> None:
    problem = one_problem({**ENHANCE, "OPENAI_MODEL_REASONING": "thinker"})
    assert problem.startswith("ENHANCE_OPENAI_MODEL, OPENAI_MODEL_REASONING: set one of them")


def test_a_bad_key_in_an_alias_is_named_by_the_alias() -> None:
    problem = one_problem({**ENHANCE, "ENHANCE_OPENAI_API_KEY": "sk bad"})
    assert problem.startswith("ENHANCE_OPENAI_API_KEY: key #1 ")
    assert "sk bad" not in problem


# --- numbers ---


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMAGEGATE_PORT", "abc"),
        ("IMAGEGATE_PORT", "70000"),
        ("IMAGEGATE_PORT", "-1"),
        ("IMAGEGATE_PORT", "80.5"),
        ("LLM_TIMEOUT", "-1"),
        ("LLM_TIMEOUT", "0"),
        ("LLM_TIMEOUT", "nan"),
        ("LLM_TIMEOUT", "inf"),
        ("LLM_TIMEOUT", "soon"),
        ("IMAGE_GEN_TIMEOUT", "-5"),
        ("IMAGE_FETCH_TIMEOUT", "x"),
        ("IMAGE_CACHE_MAX_BYTES", "0"),
        ("IMAGE_CACHE_MAX_BYTES", "1.5"),
        ("IMAGE_CACHE_MAX_BYTES", "-10"),
        ("UPSTREAM_MAX_CLIENTS", "x"),
        ("UPSTREAM_MAX_CLIENTS", "0"),
        ("SSE_KEEPALIVE_SECONDS", "0"),
        ("SSE_KEEPALIVE_SECONDS", "nan"),
    ],
)
def test_bad_number_is_a_problem_naming_the_variable(name: str, value: str) -> None:
    problem = one_problem({name: value})
    assert problem.startswith(name + ":")


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("IMAGEGATE_PORT", "9000", "port", 9000),
        ("IMAGEGATE_PORT", "0", "port", 0),
        ("LLM_TIMEOUT", "2.5", "llm_timeout", 2.5),
        ("IMAGE_GEN_TIMEOUT", "600", "image_gen_timeout", 600.0),
        ("IMAGE_FETCH_TIMEOUT", "5", "image_fetch_timeout", 5.0),
        ("IMAGE_CACHE_MAX_BYTES", "1048576", "image_cache_max_bytes", 1048576),
        ("UPSTREAM_MAX_CLIENTS", "64", "upstream_max_clients", 64),
        ("SSE_KEEPALIVE_SECONDS", "0.5", "sse_keepalive_seconds", 0.5),
    ],
)
def test_good_numbers(name: str, value: str, attribute: str, expected: float) -> None:
    assert getattr(load_settings({name: value}), attribute) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("", "uvloop"), ("uvloop", "uvloop"), (" AsyncIO ", "asyncio")]
)
def test_event_loop_choice(value: str, expected: str) -> None:
    environ = {"EVENT_LOOP": value} if value else {}
    assert load_settings(environ).event_loop == expected


def test_unknown_event_loop_is_refused() -> None:
    problem = one_problem({"EVENT_LOOP": "trio"})
    assert "EVENT_LOOP" in problem and "uvloop or asyncio" in problem


def test_every_problem_is_reported_at_once() -> None:
    env = {
        "IMAGEGATE_PORT": "abc",
        "LLM_TIMEOUT": "-1",
        "IMAGE_CACHE_MAX_BYTES": "1.5",
        "UPSTREAM_MAX_CLIENTS": "x",
        "SSE_KEEPALIVE_SECONDS": "0",
        "LOG_LEVEL": "loud",
        "FLUX_GEN_MODEL": "f",
        "OPENAI_MODEL": "a",
        "OPENAI_MODEL_REASONING": "b",
    }
    problems = problems_of(env)
    for name in (
        "IMAGEGATE_PORT",
        "LLM_TIMEOUT",
        "IMAGE_CACHE_MAX_BYTES",
        "UPSTREAM_MAX_CLIENTS",
        "SSE_KEEPALIVE_SECONDS",
        "LOG_LEVEL",
        "FLUX_GEN_API_BASE",
        "OPENAI_MODEL_REASONING",
    ):
        assert any(name in p for p in problems), (name, problems)
    assert len(problems) >= 8


@pytest.mark.parametrize("value", ["1e9", "0x10", "1_000", "inf", "nan", "1,000", "１２", "10MiB"])
@pytest.mark.parametrize("name", ["IMAGE_CACHE_MAX_BYTES", "IMAGEGATE_PORT", "SD_MODEL_INDEX"])
def test_a_whole_number_must_be_plain_decimal_digits(name: str, value: str) -> None:
    assert one_problem({name: value}) == (
        f"{name}: must be a whole number in decimal digits (got {value!r})"
    )


@pytest.mark.parametrize("value", ["1e3", "0x10", "1_0", "inf", "-inf", "nan", "2,5", "30s"])
def test_seconds_must_be_plain_decimal_digits(value: str) -> None:
    assert one_problem({"LLM_TIMEOUT": value}).startswith(
        "LLM_TIMEOUT: must be a number in decimal digits"
    )


@pytest.mark.parametrize(("value", "expected"), [(" 42 ", 42), ("+42", 42), ("042", 42)])
def test_plain_whole_numbers_are_read(value: str, expected: int) -> None:
    assert load_settings({"SD_STEPS": value}).sd_steps == expected


@pytest.mark.parametrize(("value", "expected"), [("2.5", 2.5), ("3.", 3.0), (".5", 0.5)])
def test_plain_decimals_are_read(value: str, expected: float) -> None:
    assert load_settings({"LLM_TIMEOUT": value}).llm_timeout == expected


def test_a_value_from_a_flag_is_named_by_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"IMAGEGATE_PORT": "9000"}, flags={"IMAGEGATE_PORT": "99999"})
    assert info.value.problems == [
        "--port (IMAGEGATE_PORT): must be a port number from 0 to 65535 (got '99999')"
    ]


def test_a_flag_wins_over_the_environment() -> None:
    settings = load_settings({"IMAGEGATE_PORT": "abc"}, flags={"IMAGEGATE_PORT": "9000"})
    assert settings.port == 9000


# --- booleans, log level ---


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("True", True),
        ("yes", True),
        ("1", True),
        ("on", True),
        ("false", False),
        ("FALSE", False),
        ("no", False),
        ("0", False),
        ("off", False),
    ],
)
def test_allow_private_networks_boolean(value: str, expected: bool) -> None:
    settings = load_settings({"IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": value})
    assert settings.image_proxy_allow_private_networks is expected


@pytest.mark.parametrize("value", ["maybe", "2", "enabled"])
def test_allow_private_networks_bad_value(value: str) -> None:
    problem = one_problem({"IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": value})
    assert problem.startswith("IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS:")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("debug", "DEBUG"), ("Info", "INFO"), ("WARNING", "WARNING"), ("error", "ERROR")],
)
def test_log_level_case_insensitive(value: str, expected: str) -> None:
    assert load_settings({"LOG_LEVEL": value}).log_level == expected


@pytest.mark.parametrize("value", ["verbose", "trace", "5"])
def test_log_level_bad_value(value: str) -> None:
    assert one_problem({"LOG_LEVEL": value}).startswith("LOG_LEVEL:")


# --- PUBLIC_BASE_URL ---


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://img.example.com/", "https://img.example.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://example.com/gateway//", "https://example.com/gateway"),
    ],
)
def test_public_base_url(value: str, expected: str) -> None:
    assert load_settings({"PUBLIC_BASE_URL": value}).public_base_url == expected


@pytest.mark.parametrize(
    "value",
    [
        "ftp://x/?token=SECRET123",
        "https://example.com/?token=SECRET123",
        "https://user:SECRET123@example.com/",
        "example.com/SECRET123",
        "https:///SECRET123",
    ],
)
def test_bad_public_base_url_is_not_echoed(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"PUBLIC_BASE_URL": value})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("PUBLIC_BASE_URL:")
    assert "SECRET123" not in str(info.value)


# --- secrets are never echoed ---


@pytest.mark.parametrize(
    "env",
    [
        {"AUTHORIZED_API_KEY": "ck-good,ck SECRET123 spaced"},
        {"GATEWAY_API_KEY": "ck-SECRET123\x01"},
        {**FLUX, "FLUX_GEN_API_KEY": "sk-one,sk-SECRET123-ünicode"},
        {**group_env(1, "m1"), "IMAGE_GEN_API_KEY_1": "sk-SECRET123\ttab"},
        {"SD_API_KEY": "sd SECRET123"},
        {
            "OPENAI_MODEL": "gpt",
            "OPENAI_API_BASE": "https://llm.example/v1",
            "OPENAI_API_KEY": "k\x7fSECRET123",
        },
        {"UPSTREAM_PROXY": "ftp://user:SECRET123@proxy.example:21"},
        {"UPSTREAM_PROXY": "http://user:SECRET123@proxy.example:99999"},
        {"IMAGE_FETCH_PROXY": "https://user:SECRET123@proxy.example:3128"},
        {"IMAGE_FETCH_PROXY": "http://user:SECRET123@proxy.example:3128/path"},
        {**group_env(1, "m1"), "IMAGE_GEN_EXTRA_1": '{"webhook_secret": SECRET123}'},
        {**group_env(1, "m1"), "IMAGE_GEN_EXTRA_1": '["SECRET123"]'},
    ],
    ids=lambda env: next(iter(env)) if len(env) == 1 else "group",
)
def test_a_bad_secret_value_is_named_never_echoed(env: dict[str, str]) -> None:
    problems = problems_of(env)
    report = problems_report(problems, ())
    assert "SECRET123" not in report
    assert all(re.match(r"^[A-Z_0-9]+: ", problem) for problem in problems), problems


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{steps: 30}", "is not valid JSON at line 1 column 2"),
        ("[1, 2]", "must be a JSON object ({...}), not list"),
        ('"steps"', "must be a JSON object ({...}), not str"),
    ],
)
def test_extra_fields_must_be_a_json_object(text: str, reason: str) -> None:
    problem = one_problem({**group_env(2, "m2"), "IMAGE_GEN_EXTRA_2": text})
    assert problem == f"IMAGE_GEN_EXTRA_2: {reason}"


def test_extra_fields_reach_the_group() -> None:
    env = {**group_env(1, "m1"), "IMAGE_GEN_EXTRA_1": '{"steps": 30, "loras": {"a/b": 1}}'}
    group = next(g for g in load_settings(env).groups if g.name == "IMAGE_GEN_1")
    assert group.extra == {"steps": 30, "loras": {"a/b": 1}}


def test_a_bad_key_is_named_by_its_position() -> None:
    problem = one_problem({"AUTHORIZED_API_KEY": "ck-1, ck-2 ,ck 3"})
    assert problem.startswith("AUTHORIZED_API_KEY: key #3 ")


def test_settings_list_every_secret_for_the_log_filter() -> None:
    settings = load_settings(
        {
            **FLUX,
            "AUTHORIZED_API_KEY": "ck-1",
            "IMAGE_PROXY_SECRET": "link-secret",
            "UPSTREAM_PROXY": "http://proxy-user:proxy-pass@127.0.0.1:3128",
        }
    )
    assert {"ck-1", "sk-flux-key-1", "link-secret", "proxy-user", "proxy-pass"} <= set(
        settings.secrets()
    )


# --- client keys and loopback ---


def test_authorized_api_key_list() -> None:
    settings = load_settings({"AUTHORIZED_API_KEY": " ck-1, ck-2 ,,ck-3 "})
    assert settings.client_keys == ("ck-1", "ck-2", "ck-3")


def test_gateway_api_key_alias_alone() -> None:
    assert load_settings({"GATEWAY_API_KEY": "gk-1,gk-2"}).client_keys == ("gk-1", "gk-2")


def test_both_client_key_variables_give_the_union() -> None:
    settings = load_settings(
        {"AUTHORIZED_API_KEY": "ck-1,shared", "GATEWAY_API_KEY": "shared,gk-1"}
    )
    assert set(settings.client_keys) == {"ck-1", "shared", "gk-1"}
    assert len(settings.client_keys) == 3


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_non_loopback_host_without_client_key_is_a_problem(host: str) -> None:
    problem = one_problem({"IMAGEGATE_HOST": host})
    assert problem.startswith("AUTHORIZED_API_KEY")
    assert host in problem


def test_non_loopback_host_through_override_is_checked() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({}, {"host": "0.0.0.0"})
    assert info.value.problems[0].startswith("AUTHORIZED_API_KEY")


@pytest.mark.parametrize("variable", ["AUTHORIZED_API_KEY", "GATEWAY_API_KEY"])
def test_non_loopback_host_with_client_key_is_fine(variable: str) -> None:
    settings = load_settings({"IMAGEGATE_HOST": "0.0.0.0", variable: "ck-1"})
    assert settings.host == "0.0.0.0"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::1", "localhost", "LOCALHOST", "127.0.0.2", "[::1]"]
)
def test_loopback_hosts_need_no_key(host: str) -> None:
    assert load_settings({"IMAGEGATE_HOST": host}).client_keys == ()
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.example"])
def test_is_loopback_host_false(host: str) -> None:
    assert not is_loopback_host(host)


# --- secrets ---

SECRET_VALUES = {
    "FLUX_GEN_API_KEY": "sk-flux-SECRET-aaa1,sk-flux-SECRET-aaa2",
    "IMAGE_GEN_API_KEY_1": "sk-img-SECRET-bbb1",
    "SD_API_KEY": "sk-sd-SECRET-ccc1",
    "OPENAI_API_KEY": "sk-llm-SECRET-ddd1",
    "AUTHORIZED_API_KEY": "ck-SECRET-eee1,ck-SECRET-eee2",
    "IMAGE_PROXY_SECRET": "proxy-SECRET-fff1",
}


def _secret_pieces() -> list[str]:
    return [piece for value in SECRET_VALUES.values() for piece in split_list(value)]


def test_repr_of_settings_has_no_secret() -> None:
    env = {
        **FLUX,
        **group_env(1, "img-1", kind="openai-images"),
        "OPENAI_API_BASE": "https://llm.example.com/v1",
        "OPENAI_MODEL": "gpt-4o-mini",
        **SECRET_VALUES,
    }
    settings = load_settings(env)
    assert settings.image_proxy_secret == "proxy-SECRET-fff1"
    assert settings.client_keys == ("ck-SECRET-eee1", "ck-SECRET-eee2")
    text = repr(settings) + str(settings) + repr(settings.groups) + repr(settings.optimiser)
    for secret in _secret_pieces():
        assert secret not in text
    assert "SECRET" not in text


def test_config_error_messages_have_no_secret() -> None:
    env = {
        **SECRET_VALUES,
        "FLUX_GEN_MODEL": "dup",  # FLUX group without its base
        "IMAGE_GEN_MODEL_1": "dup",  # group without base
        "SD_MODEL": "dup",
        "OPENAI_MODEL": "a",
        "OPENAI_MODEL_REASONING": "b",
        "IMAGEGATE_HOST": "0.0.0.0",
        "IMAGEGATE_PORT": "abc",
        "PUBLIC_BASE_URL": "ftp://x/?token=SECRET123",
    }
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    error = info.value
    text = str(error) + repr(error) + " ".join(error.problems) + repr(error.groups)
    for secret in [*_secret_pieces(), "SECRET123"]:
        assert secret not in text
    assert len(error.problems) >= 4


def test_config_error_with_keys_in_wrong_places_has_no_secret() -> None:
    env = {
        "SD_API_KEY": "sk-sd-SECRET-ccc1",
        "SD_API_BASE": "not-a-url?key=SECRET-in-url",
        "IMAGE_GEN_MODEL_2": "m",
        "IMAGE_GEN_API_BASE_2": "https://x.example/?key=SECRET-in-query",
        "IMAGE_GEN_API_KEY_2": "sk-img-SECRET-bbb1",
        "IMAGE_GEN_KIND_2": "nope",
    }
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    text = " ".join(info.value.problems) + repr(info.value.groups)
    assert "SECRET" not in text


# --- helpers ---


def test_redact_url_drops_user_info_and_query() -> None:
    shown = redact_url("https://user:pw@host:8443/p?key=abc")
    assert "pw" not in shown
    assert "abc" not in shown
    assert "user" not in shown
    assert shown.startswith("https://host:8443/p")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://api.siliconflow.cn/v1/images/generations",
            "https://api.siliconflow.cn/v1/images/generations",
        ),
        ("http://[::1]:9000/x", "http://[::1]:9000/x"),
        ("https://h/p#frag-SECRET", "https://h/p"),
    ],
)
def test_redact_url_keeps_the_rest(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", ()), ("a", ("a",)), (" a , b ,, c ,", ("a", "b", "c")), (",,", ())],
)
def test_split_list(text: str, expected: tuple[str, ...]) -> None:
    assert split_list(text) == expected


def test_settings_default_instance_matches_load_settings() -> None:
    loaded = load_settings({})
    default = Settings()
    assert loaded.port == default.port
    assert loaded.image_cache_max_bytes == default.image_cache_max_bytes
