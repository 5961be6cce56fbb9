"""The one validated, frozen settings object, built from the environment, an env file and flags.

What each variable is (type, default, help) is declared in options.py; this module reads the
variables the table declares, checks how they fit together, and builds ``Settings``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tornado_imagegate import values
from tornado_imagegate.datadir import default_data_dir, images_dir
from tornado_imagegate.options import (
    DEMO_MODEL,
    ENDPOINT_PATHS,
    FAMILIES,
    OPTION,
    GroupFamily,
    Option,
    setting,
)
from tornado_imagegate.provider_kinds import KINDS, MAX_INPUT_IMAGES, provider_kind
from tornado_imagegate.typos import near_misses
from tornado_imagegate.urlpolicy import url_origin


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every problem, each naming its variable."""

    def __init__(
        self,
        problems: list[str],
        groups: tuple[ProviderGroup, ...] = (),
        warnings: tuple[str, ...] = (),
    ) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.groups = groups
        self.warnings = warnings


@dataclass(frozen=True)
class ProviderGroup:
    """One configured image provider: its kind, endpoint, models and keys."""

    name: str
    kind: str
    models: tuple[str, ...]
    endpoint: str = ""
    keys: tuple[str, ...] = field(default=(), repr=False)
    model_variable: str = ""
    # Extra request fields for this group's upstream (IMAGE_GEN_EXTRA_n), merged into each body.
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, hash=False)
    # IMAGE_GEN_INPUTS_n: None as the kind, -1 (true) the kind's number, else how many.
    inputs: int | None = None

    @property
    def image_inputs(self) -> int:
        """The most input images a request to one of this group's models may carry (0: none)."""
        return max((self.image_inputs_for(model) for model in self.models), default=0)

    def image_inputs_for(self, model: str) -> int:
        """How many input images a request to ``model`` may carry (0: none)."""
        declared = provider_kind(self.kind).image_inputs_for(model)
        if self.inputs is None:
            return declared
        if self.inputs < 0:
            return declared or MAX_INPUT_IMAGES
        return min(self.inputs, MAX_INPUT_IMAGES)

    def takes_mask(self, model: str) -> bool:
        """Whether a request to ``model`` may carry an edit mask (it must take images too)."""
        return self.image_inputs_for(model) > 0 and provider_kind(self.kind).takes_mask(model)

    @property
    def owned_by(self) -> str:
        """The ``owned_by`` value of this group's models in ``/v1/models``."""
        return "imagegate" if self.kind == "demo" else self.name.lower().replace("_", "-")


@dataclass(frozen=True)
class OptimiserSettings:
    """The OpenAI-compatible LLM that rewrites prompts; no ``model`` means optimisation is off."""

    endpoint: str = ""  # its chat-completions endpoint, from OPENAI_API_BASE
    keys: tuple[str, ...] = setting("OPENAI_API_KEY")
    model: str = ""
    reasoning: bool = False

    @property
    def enabled(self) -> bool:
        """Whether prompts are sent to the LLM before generation."""
        return bool(self.model)


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to run, validated once at start-up.

    A field made with ``setting(NAME)`` is read from that option of the table in options.py.
    """

    host: str = setting("IMAGEGATE_HOST")
    port: int = setting("IMAGEGATE_PORT")
    workers: int = setting("IMAGEGATE_WORKERS")
    client_keys: tuple[str, ...] = setting("AUTHORIZED_API_KEY")
    client_keys_generated: bool = False
    data_dir: str = setting("IMAGEGATE_DATA_DIR")  # "": everything in memory
    groups: tuple[ProviderGroup, ...] = ()
    optimiser: OptimiserSettings = OptimiserSettings()
    public_base_url: str = setting("PUBLIC_BASE_URL")
    image_proxy_secret: str = setting("IMAGE_PROXY_SECRET")
    image_proxy_secret_kept: bool = False  # made and kept in the data directory, not configured
    image_cache_max_bytes: int = setting("IMAGE_CACHE_MAX_BYTES")
    image_cache_dir: str = setting("IMAGE_CACHE_DIR")  # "": no disk tier
    image_cache_dir_max_bytes: int = setting("IMAGE_CACHE_DIR_MAX_BYTES")
    image_max_bytes: int = setting("IMAGE_MAX_BYTES")
    image_input_max_bytes: int = setting("IMAGE_INPUT_MAX_BYTES")
    sd_steps: int = setting("SD_STEPS")
    stream_reasoning: bool = setting("STREAM_REASONING")
    answer_task_requests: bool = setting("ANSWER_TASK_REQUESTS")
    conversation_mode: str = setting("CONVERSATION_MODE")
    images_default_model: str = setting("IMAGES_DEFAULT_MODEL")
    metrics_access: str = setting("METRICS_ACCESS")
    shutdown_grace_seconds: float = setting("SHUTDOWN_GRACE_SECONDS")
    event_loop: str = setting("EVENT_LOOP")
    sd_model_index: int = setting("SD_MODEL_INDEX")
    image_proxy_allow_private_networks: bool = setting("IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS")
    llm_timeout: float = setting("LLM_TIMEOUT")
    image_gen_timeout: float = setting("IMAGE_GEN_TIMEOUT")
    image_fetch_timeout: float = setting("IMAGE_FETCH_TIMEOUT")
    upstream_max_clients: int = setting("UPSTREAM_MAX_CLIENTS")
    upstream_proxy: str = setting("UPSTREAM_PROXY")
    image_fetch_proxy: str = setting("IMAGE_FETCH_PROXY")
    max_client_connections: int = setting("MAX_CLIENT_CONNECTIONS")  # 0: sized at start-up
    key_allowed_fails: int = setting("KEY_ALLOWED_FAILS")
    key_max_cooldown_seconds: float = setting("KEY_MAX_COOLDOWN_SECONDS")
    cors_allow_origins: tuple[str, ...] = setting("CORS_ALLOW_ORIGINS")
    sse_keepalive_seconds: float = setting("SSE_KEEPALIVE_SECONDS")
    log_level: str = setting("LOG_LEVEL")
    redis_url: str = setting("REDIS_URL")
    redis_image_ttl_seconds: float = setting("REDIS_IMAGE_TTL_SECONDS")
    # Worth a word, not a stop: near misses, and a name and its alias set to different values.
    warnings: tuple[str, ...] = ()

    def group_for(self, model: str) -> ProviderGroup | None:
        """The provider group serving ``model``, or None when no group has it."""
        for group in self.groups:
            if model in group.models:
                return group
        return None

    def secret_material(self) -> list[str]:
        """Every configured secret: the stable input from which a proxy secret can be derived."""
        material = [] if self.client_keys_generated else list(self.client_keys)
        material += [key for group in self.groups for key in group.keys]
        material += list(self.optimiser.keys)
        return material

    def secrets(self) -> list[str]:
        """Every secret value of this configuration, for the log filter to hide."""
        found = [*self.client_keys, *self.secret_material(), self.image_proxy_secret]
        for url in (self.upstream_proxy, self.image_fetch_proxy):
            parts = urlsplit(url) if "://" in url else None
            if parts is not None:
                found += [parts.username or "", parts.password or ""]
        if self.redis_url:
            # Only the password: a Redis user name is often "default", a word logs must keep.
            parts = urlsplit(self.redis_url)
            found += [parts.password or "", *parse_qs(parts.query).get("password", [])]
        return [value for value in found if value]

    @property
    def model_ids(self) -> list[str]:
        """Every model id, in configuration order."""
        return [model for group in self.groups for model in group.models]

    @property
    def provider_origins(self) -> frozenset[str]:
        """The origins (scheme, host, port) of every provider group's endpoint: image links
        there are fetched as the provider itself is reached."""
        origins = (url_origin(group.endpoint) for group in self.groups if group.endpoint)
        return frozenset(origin for origin in origins if origin is not None)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Reader:
    """Reads variables from a mapping, collecting every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str], flags: Mapping[str, str]) -> None:
        self.environ = environ
        self.flags = flags  # variable -> the flag its value came from
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.invalid: set[str] = set()

    def raw(self, name: str) -> str:
        """A variable's text, stripped ("" when unset)."""
        return self.environ.get(name, "").strip()

    def label(self, name: str) -> str:
        """How a problem names the variable: by its flag when the value came from one."""
        flag = self.flags.get(name)
        return f"{flag} ({name})" if flag else name

    def parse(self, name: str, value_type: values.ValueType, default: Any, text: str = "") -> Any:
        """A variable parsed (``text`` stands in when it is unset); a bad value is a problem."""
        text = self.raw(name) or text
        if not text:
            return default
        try:
            return value_type.parse(text)
        except ValueError as exc:
            shown = "" if value_type.secret else f" (got {_describe(text)})"
            self.problems.append(f"{self.label(name)}: {exc}{shown}")
            self.invalid.add(name)
            return default

    def source(self, option: Option) -> str:
        """The variable that gives ``option`` its value: its name, else the first alias set."""
        if self.raw(option.name):
            return option.name
        return next((name for name in option.aliases if self.raw(name)), option.name)

    def option(self, option: Option) -> Any:
        """An option's value, from its name or an alias, or joined from both."""
        names = (option.name, *option.aliases)
        if option.join_aliases:
            lists = [self.parse(name, option.type, ()) for name in names]
            joined = tuple(dict.fromkeys(item for items in lists for item in items))
            return joined if any(self.raw(name) for name in names) else option.default
        source = self.source(option)
        for alias in option.aliases:
            if source == option.name and self.raw(alias) and self.raw(alias) != self.raw(source):
                self.warnings.append(
                    f"{alias} and {option.name} are both set, to different values: "
                    f"{option.name} is used"
                )
        return self.parse(source, option.type, option.default)


def _describe(text: str) -> str:
    """Quote a non-secret value for an error message, shortened."""
    shown = text if len(text) <= 40 else text[:37] + "..."
    return repr(shown)


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# --- provider groups ---


def _read_groups(reader: _Reader) -> tuple[ProviderGroup, ...]:
    """Every configured group, family by family, then the demo; model ids must be unique."""
    groups = [
        group
        for family in FAMILIES
        for number in _numbers(family, reader.environ)
        if (group := _read_group(reader, family, number)) is not None
    ]
    groups.append(ProviderGroup(name="demo", kind="demo", models=(DEMO_MODEL,)))
    _check_unique_models(reader, groups)
    return tuple(groups)


def _numbers(family: GroupFamily, environ: Mapping[str, str]) -> list[str]:
    """The numbers of a numbered family's groups, in numeric order, each kept as written."""
    if not family.numbered:
        return [""]
    found = {match.group(2) for name in environ if (match := family.pattern.match(name))}
    return sorted(found, key=int)


def _read_group(reader: _Reader, family: GroupFamily, number: str) -> ProviderGroup | None:
    """One group, if any of its variables is set and it has every one it needs."""
    names = {f.suffix: family.variable(f.suffix, number) for f in family.fields}
    given = [names[f.suffix] for f in family.fields if reader.raw(names[f.suffix])]
    if not given:
        return None
    required = [
        names[f.suffix]
        for f in family.fields
        if f.default is None and not (f.suffix == "API_BASE" and _has_default_base(reader, names))
    ]
    missing = [name for name in required if name not in given]
    name = family.group_name(number)
    if missing:
        together = " together" if len(required) > 1 else ""
        verb = "is" if len(given) == 1 else "are"
        reader.problems.append(
            f"{', '.join(missing)}: missing; group {name} needs {_and(required)}{together} "
            f"({_and(given)} {verb} set)"
        )
        return None
    read = {
        f.suffix: reader.parse(names[f.suffix], f.type, None, f.default or "")
        for f in family.fields
    }
    kind = family.kind or read["KIND"]
    if kind is None:
        return None  # the KIND problem is noted
    endpoint = _endpoint(
        reader, names["API_BASE"], read["API_BASE"] or provider_kind(kind).default_endpoint, kind
    )
    if not read["MODEL"]:
        reader.problems.append(f"{names['MODEL']}: lists no model id")
    if not read["API_KEY"] and names["API_KEY"] not in reader.invalid:
        reader.problems.append(f"{names['API_KEY']}: lists no key")
    return ProviderGroup(
        name=name,
        kind=kind,
        models=read["MODEL"] or (),
        endpoint=endpoint,
        keys=read["API_KEY"] or (),
        model_variable=names["MODEL"],
        extra=read.get("EXTRA") or {},
        inputs=read.get("INPUTS"),
    )


def _has_default_base(reader: _Reader, names: dict[str, str]) -> bool:
    """Whether the kind a group names has an official base URL, so its API_BASE may be unset."""
    kind = reader.raw(names["KIND"]).lower() if "KIND" in names else ""
    return kind in KINDS and bool(KINDS[kind].default_endpoint)


def _endpoint(reader: _Reader, variable: str, url: str | None, kind: str) -> str:
    """The endpoint a ``kind`` of API is called at, from a base URL or the endpoint itself."""
    if not url:
        return ""
    try:
        return values.endpoint_url(url, ENDPOINT_PATHS[kind])
    except ValueError as exc:
        reader.problems.append(f"{variable}: {exc} (kind {kind})")
        return ""


def _check_unique_models(reader: _Reader, groups: list[ProviderGroup]) -> None:
    seen: dict[str, str] = {}
    for group in groups:
        variable = group.model_variable or "the built-in demo provider"
        for model in group.models:
            if model in seen:
                reader.problems.append(
                    f"{variable}: model id {model!r} is already defined by {seen[model]}; "
                    "model ids must be unique"
                )
            else:
                seen[model] = variable


# --- the prompt optimiser ---


def _read_optimiser(reader: _Reader) -> OptimiserSettings:
    """The optimiser: on when one of its two model variables is set, with a base and a key."""
    plain_option, reasoning_option = OPTION["OPENAI_MODEL"], OPTION["OPENAI_MODEL_REASONING"]
    plain = reader.option(plain_option)
    reasoning = reader.option(reasoning_option)
    plain_variable = reader.source(plain_option)
    if plain and reasoning:
        reader.problems.append(
            f"{plain_variable}, OPENAI_MODEL_REASONING: set one of them, not both "
            "(OPENAI_MODEL for a plain model, OPENAI_MODEL_REASONING for a thinking model)"
        )
        return OptimiserSettings()
    model = plain or reasoning
    if not model:
        return OptimiserSettings()
    variable = plain_variable if plain else reasoning_option.name
    base_option, key_option = OPTION["OPENAI_API_BASE"], OPTION["OPENAI_API_KEY"]
    endpoint = _endpoint(reader, reader.source(base_option), reader.option(base_option), "chat")
    keys = reader.option(key_option)
    for option in (base_option, key_option):
        if not reader.raw(reader.source(option)):
            reader.problems.append(f"{option.name}: missing; {variable} is set and needs it")
    return OptimiserSettings(endpoint=endpoint, keys=keys, model=model, reasoning=bool(reasoning))


# --- the whole configuration ---


def _state_places(reader: _Reader, data_dir: str | None, cache_dir: str | None) -> dict[str, str]:
    """Where state is kept: the data directory and the disk tier's.

    Unset, ``IMAGEGATE_DATA_DIR`` is its default (from the environment read, never from this
    process's own) and ``IMAGE_CACHE_DIR`` is ``images/`` in it; set to nothing, either is none.
    """
    if "IMAGEGATE_DATA_DIR" not in reader.environ:
        data_dir = default_data_dir(reader.environ)
    if "IMAGE_CACHE_DIR" not in reader.environ:
        cache_dir = images_dir(data_dir) if data_dir else ""
    return {"data_dir": data_dir or "", "image_cache_dir": cache_dir or ""}


def load_settings(
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    *,
    flags: Mapping[str, str] | None = None,
    strict: bool = False,
) -> Settings:
    """Build and validate the settings; raise ConfigError listing every problem found.

    ``flags`` holds the values given as command-line flags, by variable: they win over
    ``environ``, and a problem with one names the flag. ``overrides`` are settings fields that
    win over both. A variable that looks like the gateway's but is not one is a warning
    (``Settings.warnings``), or a problem when ``strict`` (``--check-config``) or when the
    configuration has problems anyway.
    """
    flags = flags or {}
    reader = _Reader({**environ, **flags}, {name: OPTION[name].flag for name in flags})
    settings: dict[str, Any] = {
        each.name: reader.option(each.metadata["option"])
        for each in fields(Settings)
        if "option" in each.metadata
    }
    settings.update(_state_places(reader, settings["data_dir"], settings["image_cache_dir"]))
    settings["optimiser"] = _read_optimiser(reader)
    groups = _read_groups(reader)
    settings["groups"] = groups
    settings.update({name: value for name, value in (overrides or {}).items() if value is not None})
    default_model = settings["images_default_model"]
    if default_model and not any(default_model in group.models for group in groups):
        reader.problems.append(
            f"IMAGES_DEFAULT_MODEL: {default_model!r} is not a configured model id"
        )
    if not settings["client_keys"] and not is_loopback_host(settings["host"]):
        reader.problems.append(
            f"AUTHORIZED_API_KEY: not set, so the gateway may only listen on loopback; "
            f"set a client key to listen on {settings['host']} (IMAGEGATE_HOST / --host)"
        )
    if settings["redis_url"] and not settings["image_proxy_secret"]:
        reader.problems.append(
            "IMAGE_PROXY_SECRET: not set, and REDIS_URL is: every instance that shares the Redis "
            "must sign image links with the same secret; set the same IMAGE_PROXY_SECRET on each"
        )
    typos = near_misses(environ)
    if strict or reader.problems:
        reader.problems += typos
    else:
        reader.warnings += typos
    if reader.problems:
        raise ConfigError(reader.problems, groups, tuple(reader.warnings))
    return Settings(**settings, warnings=tuple(reader.warnings))
