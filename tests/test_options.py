"""The option table: every option is read, README.rst documents each one and nothing else."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from tornado_imagegate import values
from tornado_imagegate.config import ConfigError, OptimiserSettings, Settings, load_settings
from tornado_imagegate.options import (
    FAMILIES,
    OPTION,
    OPTIONS,
    Option,
    group_variables,
    is_gateway_variable,
    option_names,
)
from tornado_imagegate.typos import CLIENT_SIDE_VARIABLES, closest_variable, near_miss

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text(encoding="utf-8")
ENV_EXAMPLE = (ROOT / "systemd" / "imagegate.env.example").read_text(encoding="utf-8")

# README's examples of near misses (with the name it says they mean) and of other programs'
# variables: the only gateway-looking names it may show that the gateway does not read.
README_NEAR_MISSES = {
    "AUTHORISED_API_KEY": "AUTHORIZED_API_KEY",
    "IMAGE_GEN_KIND2": "IMAGE_GEN_KIND_2",
    "FLUX_GEN_MODELS": "FLUX_GEN_MODEL",
}
README_OTHER_PROGRAMS = ("OPENAI_ORG_ID", "OPENAI_BASE_URL", "SD_CARD")
# A variable-like word: FLUX_GEN_MODEL, IMAGE_GEN_MODEL_n, FLUX_GEN_*, IMAGE_GEN_*_n.
VARIABLE_WORD = re.compile(r"(?<![A-Za-z0-9_])[A-Z][A-Z0-9]*(?:_(?:[A-Z0-9]+|\*|n(?![a-z])))+")
OPTIMISER = {
    "OPENAI_MODEL": "gpt-4o-mini",
    "OPENAI_API_BASE": "https://llm.example.com/v1",
    "OPENAI_API_KEY": "sk-llm-options",
}
SAMPLE_BAD_VALUE = "not valid 1e9"


def _gateway_words() -> set[str]:
    """First words of the gateway's variables (IMAGE, OPENAI, SD, ...): what looks like ours."""
    return {name.split("_")[0] for name in [*option_names(), *group_variables()]}


def _group_names() -> set[str]:
    return {family.group_name() for family in FAMILIES if not family.numbered}


def _looks_right(word: str) -> bool:
    """Whether README may show ``word``: a real variable, group, pattern, or no look of ours."""
    if "*" in word:
        prefix = word.split("*")[0]
        return any(name.startswith(prefix) for name in [*option_names(), *group_variables()])
    if word.endswith("_n"):
        return word in group_variables("n")
    if is_gateway_variable(word) or word in _group_names() or re.match(r"^IMAGE_GEN_\d+$", word):
        return True
    if word in README_NEAR_MISSES or word in README_OTHER_PROGRAMS:
        return True
    if word in CLIENT_SIDE_VARIABLES:  # the quick start's variable for curl and the SDKs
        return True
    return near_miss(word) is None and word.split("_")[0] not in _gateway_words()


def test_readme_documents_every_option_and_alias() -> None:
    missing = [name for name in option_names() if f"``{name}``" not in README]
    assert not missing, f"README.rst does not document {missing}"


def test_readme_documents_every_provider_group_field() -> None:
    missing = [name for name in group_variables("n") if f"``{name}``" not in README]
    assert not missing, f"README.rst does not document {missing}"


def test_readme_mentions_no_gateway_variable_that_does_not_exist() -> None:
    words = sorted(set(VARIABLE_WORD.findall(README)))
    assert "IMAGE_GEN_MODEL_n" in words and "FLUX_GEN_*" in words  # the pattern finds them
    wrong = [word for word in words if not _looks_right(word)]
    assert not wrong, f"README.rst names variables the gateway does not read: {wrong}"


def test_readme_examples_of_near_misses_and_other_programs_are_true() -> None:
    for word, meant in README_NEAR_MISSES.items():
        assert closest_variable(word) == meant
        assert f"``{word}``" in README
    for word in README_OTHER_PROGRAMS:
        assert not is_gateway_variable(word)
        assert near_miss(word) is None, word
        assert f"``{word}``" in README


def test_the_example_env_file_sets_only_gateway_variables() -> None:
    names = re.findall(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=", ENV_EXAMPLE, re.MULTILINE)
    assert len(names) >= 5
    assert [name for name in names if not is_gateway_variable(name)] == []


def test_every_option_reaches_the_settings() -> None:
    """An option is a field of Settings or the optimiser's, or the optimiser reads it."""
    bound = {
        each.metadata["option"].name
        for settings_class in (Settings, OptimiserSettings)
        for each in fields(settings_class)
        if "option" in each.metadata
    }
    read_by_the_optimiser = {"OPENAI_API_BASE", "OPENAI_MODEL", "OPENAI_MODEL_REASONING"}
    assert bound | read_by_the_optimiser == set(OPTION)


def _refuses_sample(option_name: str) -> bool:
    try:
        OPTION[option_name].type.parse(SAMPLE_BAD_VALUE)
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("name", [o.name for o in OPTIONS if _refuses_sample(o.name)])
def test_every_checked_option_is_read_and_its_problem_named(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({**OPTIMISER, name: SAMPLE_BAD_VALUE})
    assert [p for p in info.value.problems if p.startswith(f"{name}: ")], info.value.problems


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.secret], ids=lambda o: o.name)
def test_a_secret_option_is_never_shown(option: Option) -> None:
    """What the report shows of a secret option's value never holds the secret."""
    secret = "SECRET-9f3a"
    if isinstance(option.default, tuple):
        samples: list[object] = [(secret,), ("other", secret)]
    elif option.type is values.SECRET:
        samples = [secret]
    else:  # a URL: the secret rides in its user-info or query
        samples = [
            f"https://user:{secret}@host.example/v1?key={secret}",
            f"http://{secret}:{secret}@proxy.example:3128",
        ]
    for sample in samples:
        assert secret not in option.show(sample)


def test_option_names_are_unique_and_sections_known() -> None:
    names = option_names() + group_variables()
    assert len(names) == len(set(names))
    assert all(option.help and option.section for option in OPTIONS)
