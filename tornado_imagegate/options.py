"""Every variable the gateway reads, declared once: the option table and the provider groups.

The table drives loading and validation (config.py), the ``--check-config`` report, ``--help``'s
list of variables, the helpers that clear the gateway's variables in tests and benches, and the
test that README.rst documents each one. A new setting is one entry here and one field of
``config.Settings`` (``setting(NAME)``), plus its README entry and the code that uses it.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from tornado_imagegate.provider_kinds import group_kind_names, provider_kind
from tornado_imagegate.values import (
    API_URL,
    BOOLEAN,
    BYTES,
    COUNT,
    ENDPOINT,
    FETCH_PROXY,
    HOST,
    IMAGE_INPUTS,
    INDEX,
    JSON_OBJECT,
    KEYS,
    NAMES,
    PORT,
    PROXY,
    PUBLIC_URL,
    REDIS_URL,
    SECONDS,
    SECRET,
    TEXT,
    WORKERS,
    ValueType,
    one_of,
)

DEMO_MODEL = "imagegate-demo"
DEFAULT_SD_API_BASE = provider_kind("sd").default_endpoint
DEFAULT_SD_MODEL = "Z-Image"
GROUP_KINDS = group_kind_names()
# The path each kind calls below a provider's base URL ("": the URL is the endpoint as given);
# the prompt optimiser calls the chat kind's.
ENDPOINT_PATHS = {name: provider_kind(name).endpoint_path for name in GROUP_KINDS}
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")

SECTIONS = {
    "listen": "listening and serving",
    "state": "state kept between runs",
    "clients": "client access",
    "optimiser": "prompt optimisation",
    "providers": "image providers",
    "images": "image links, store and fetches",
    "upstream": "upstream calls and keys",
    "shared": "state shared by several instances (Redis)",
    "logging": "logging",
}


@dataclass(frozen=True)
class Option:
    """One variable: its type and default, a one-line help, its group, aliases and flag.

    ``default_text`` is how --help and the report name a default that is computed, or that is
    empty and means more than "none" ("from each request"). An alias is read when the name
    itself is not set; with ``join_aliases`` the name's and its aliases' lists are joined instead.
    ``section`` is the group the option is listed under (set by the table). A default of None
    is computed from the environment when the settings are loaded (config.py); a ``Settings``
    built without loading has "" there.
    """

    name: str
    type: ValueType
    default: Any
    help: str
    aliases: tuple[str, ...] = ()
    join_aliases: bool = False
    flag: str = ""
    default_text: str = ""
    section: str = ""

    @property
    def secret(self) -> bool:
        """Whether the value is, or may carry, a secret: never echoed, never shown."""
        return self.type.secret

    def show(self, value: Any) -> str:
        """The value as the report prints it (never a secret)."""
        if value == self.default and self.default_text:
            return self.default_text
        return self.type.show(value) if value not in ("", ()) else "none"


def _section(name: str, *options: Option) -> tuple[Option, ...]:
    return tuple(dataclasses.replace(option, section=name) for option in options)


OPTIONS: tuple[Option, ...] = (
    *_section(
        "listen",
        Option("IMAGEGATE_HOST", HOST, "127.0.0.1", "address to listen on", flag="--host"),
        Option("IMAGEGATE_PORT", PORT, 8080, "port to listen on", flag="--port"),
        Option(
            "IMAGEGATE_WORKERS",
            WORKERS,
            1,
            "worker processes sharing the port (auto: one per CPU)",
            flag="--workers",
        ),
        Option(
            "MAX_CLIENT_CONNECTIONS",
            COUNT,
            0,
            "open client connections at once",
            default_text="from the descriptor limit",
        ),
        Option("SSE_KEEPALIVE_SECONDS", SECONDS, 10.0, "keep-alive interval of streams"),
        Option(
            "SHUTDOWN_GRACE_SECONDS", SECONDS, 30.0, "grace for requests in flight after SIGTERM"
        ),
        Option("EVENT_LOOP", one_of("uvloop", "asyncio"), "uvloop", "event loop"),
        Option(
            "METRICS_ACCESS",
            one_of("loopback", "public", "off"),
            "loopback",
            "who may read /metrics",
        ),
    ),
    *_section(
        "state",
        Option(
            "IMAGEGATE_DATA_DIR",
            TEXT,
            None,
            "directory of the generated client key, the link secret and the images; "
            "empty: memory only",
            default_text="$STATE_DIRECTORY, else ${XDG_DATA_HOME:-~/.local/share}/imagegate",
        ),
    ),
    *_section(
        "clients",
        Option(
            "AUTHORIZED_API_KEY",
            KEYS,
            (),
            "client keys",
            aliases=("GATEWAY_API_KEY",),
            join_aliases=True,
            default_text="none: one is generated at start-up (loopback only)",
        ),
        Option("CORS_ALLOW_ORIGINS", NAMES, ("*",), "origins allowed from a browser"),
        Option("ANSWER_TASK_REQUESTS", BOOLEAN, True, "answer housekeeping requests with text"),
        Option(
            "CONVERSATION_MODE",
            one_of("refine", "standalone"),
            "refine",
            "follow-up messages refine the conversation's last image",
        ),
    ),
    *_section(
        "optimiser",
        Option(
            "OPENAI_API_BASE",
            API_URL,
            "",
            "the optimiser LLM's base URL or endpoint",
            aliases=("ENHANCE_OPENAI_API_BASE",),
        ),
        Option(
            "OPENAI_API_KEY", KEYS, (), "the optimiser's keys", aliases=("ENHANCE_OPENAI_API_KEY",)
        ),
        Option(
            "OPENAI_MODEL",
            TEXT,
            "",
            "optimiser model, a plain one",
            aliases=("ENHANCE_OPENAI_MODEL",),
        ),
        Option("OPENAI_MODEL_REASONING", TEXT, "", "optimiser model, a thinking one"),
        Option("LLM_TIMEOUT", SECONDS, 30.0, "prompt optimisation deadline"),
        Option("STREAM_REASONING", BOOLEAN, True, "stream a thinking optimiser's reasoning"),
    ),
    *_section(
        "providers",
        Option("IMAGE_GEN_TIMEOUT", SECONDS, 180.0, "image generation deadline"),
        Option(
            "IMAGES_DEFAULT_MODEL",
            TEXT,
            "",
            "model of Images API requests naming none of ours",
            default_text="the first model",
        ),
        Option("SD_STEPS", COUNT, 8, "steps of SD requests"),
        Option("SD_MODEL_INDEX", INDEX, 5, "model_index of SD requests"),
    ),
    *_section(
        "images",
        Option(
            "PUBLIC_BASE_URL",
            PUBLIC_URL,
            "",
            "absolute base of image links",
            default_text="from each request",
        ),
        Option(
            "IMAGE_PROXY_SECRET",
            SECRET,
            "",
            "key that signs image links",
            default_text="kept in the data directory, else derived from the configured keys",
        ),
        Option("IMAGE_CACHE_MAX_BYTES", BYTES, 256 * 1024**2, "memory bound of the image store"),
        Option(
            "IMAGE_CACHE_DIR",
            TEXT,
            None,
            "disk tier of the image store (a directory)",
            default_text="images/ in the data directory",
        ),
        Option("IMAGE_CACHE_DIR_MAX_BYTES", BYTES, 2 * 1024**3, "bound of the disk tier"),
        Option("IMAGE_MAX_BYTES", BYTES, 32 * 1024**2, "largest image the gateway fetches"),
        Option(
            "IMAGE_INPUT_MAX_BYTES",
            BYTES,
            4 * 1024**2,
            "largest input image a client may send (each)",
        ),
        Option(
            "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS",
            BOOLEAN,
            False,
            "let image fetches reach private addresses",
        ),
        Option("IMAGE_FETCH_TIMEOUT", SECONDS, 30.0, "deadline of an image download"),
        Option("IMAGE_FETCH_PROXY", FETCH_PROXY, "", "proxy for image fetches"),
    ),
    *_section(
        "upstream",
        Option("UPSTREAM_MAX_CLIENTS", COUNT, 1024, "concurrent upstream requests"),
        Option("UPSTREAM_PROXY", PROXY, "", "proxy for provider and optimiser calls"),
        Option("KEY_ALLOWED_FAILS", COUNT, 3, "transient failures a minute before a key rests"),
        Option("KEY_MAX_COOLDOWN_SECONDS", SECONDS, 300.0, "longest rest a Retry-After imposes"),
    ),
    *_section(
        "shared",
        Option(
            "REDIS_URL", REDIS_URL, "", "Redis that several instances share (images, key rests)"
        ),
        Option(
            "REDIS_IMAGE_TTL_SECONDS",
            SECONDS,
            30 * 24 * 3600.0,
            "how long Redis keeps an image after it was last stored or served",
        ),
    ),
    *_section(
        "logging",
        Option("LOG_LEVEL", one_of(*LOG_LEVELS, synonyms={"warn": "WARNING"}), "INFO", "log level"),
    ),
)

OPTION: dict[str, Option] = {option.name: option for option in OPTIONS}


def setting(name: str) -> Any:
    """A ``Settings`` field bound to option ``name``: its default, and no repr when secret."""
    option = OPTION[name]
    default = "" if option.default is None else option.default
    return field(default=default, repr=not option.secret, metadata={"option": option})


# --- provider groups: families of variables, declared per field ---


@dataclass(frozen=True)
class GroupField:
    """One variable of a provider group; no default means the group needs it."""

    suffix: str
    type: ValueType
    help: str
    default: str | None = None


@dataclass(frozen=True)
class GroupFamily:
    """Provider groups named alike: ``FLUX_GEN_*``, ``IMAGE_GEN_*``, ``IMAGE_GEN_*_n``, ``SD_*``.

    ``kind`` is the kind of every group of the family; empty, the ``KIND`` field says it.
    A numbered family has one group per number ``n`` found in the environment.
    """

    prefix: str
    help: str
    fields: tuple[GroupField, ...]
    kind: str = ""
    numbered: bool = False

    def variable(self, suffix: str, number: str = "") -> str:
        """The variable of a field (``IMAGE_GEN_API_KEY_2``; ``IMAGE_GEN_API_KEY_n`` for "n")."""
        return f"{self.prefix}_{suffix}" + (f"_{number}" if self.numbered else "")

    def group_name(self, number: str = "") -> str:
        """The group's name in messages and the report (``IMAGE_GEN_2``)."""
        return f"{self.prefix}_{number}" if self.numbered else self.prefix

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        """Matches this family's variables; group 1 is the field, group 2 the number if any."""
        suffixes = "|".join(f.suffix for f in self.fields)
        number = "_([0-9]+)" if self.numbered else ""
        return re.compile(rf"^{self.prefix}_({suffixes}){number}$")


_MODEL = GroupField("MODEL", NAMES, "model ids")
_API_BASE = GroupField(
    "API_BASE",
    ENDPOINT,
    "the provider's base URL or full endpoint; optional for a kind with an official base ("
    + ", ".join(name for name in GROUP_KINDS if provider_kind(name).default_endpoint)
    + ")",
)
_API_KEY = GroupField("API_KEY", KEYS, "keys")
_KIND = GroupField(
    "KIND",
    one_of(*GROUP_KINDS),
    "what the endpoint speaks: " + ", ".join(GROUP_KINDS),
    "chat",
)
_EXTRA = GroupField(
    "EXTRA",
    JSON_OBJECT,
    "extra request fields for the upstream, a JSON object: added to every request body, "
    "never replacing a field the gateway sets",
    "",
)
_INPUTS = GroupField(
    "INPUTS",
    IMAGE_INPUTS,
    "whether its models take input images (to edit): true, false or how many; "
    "unset, as its kind does",
    "",
)
_IMAGE_GEN_FIELDS = (_MODEL, _API_BASE, _API_KEY, _KIND, _EXTRA, _INPUTS)

# In the order /v1/models lists their models.
FAMILIES: tuple[GroupFamily, ...] = (
    GroupFamily(
        "FLUX_GEN",
        "a SiliconFlow-type provider: model, base and key together",
        (_MODEL, _API_BASE, _API_KEY),
        kind="siliconflow",
    ),
    GroupFamily(
        "IMAGE_GEN", "a direct-image provider: model, base and key together", _IMAGE_GEN_FIELDS
    ),
    GroupFamily(
        "IMAGE_GEN",
        "the n-th direct-image provider, n = 1, 2, ...: model, base and key together",
        _IMAGE_GEN_FIELDS,
        numbered=True,
    ),
    GroupFamily(
        "SD",
        "the Z-Image / SD-type provider, on when its key is set",
        (
            _API_KEY,
            GroupField("API_BASE", ENDPOINT, "endpoint", DEFAULT_SD_API_BASE),
            GroupField("MODEL", NAMES, "model ids", DEFAULT_SD_MODEL),
        ),
        kind="sd",
    ),
)


def option_names() -> list[str]:
    """Every option's name and aliases, in table order."""
    return [name for option in OPTIONS for name in (option.name, *option.aliases)]


def fixed_names() -> list[str]:
    """Every variable without a number: options, aliases and the unnumbered groups' fields."""
    unnumbered = [family for family in FAMILIES if not family.numbered]
    return option_names() + [
        family.variable(f.suffix) for family in unnumbered for f in family.fields
    ]


def group_variables(number: str = "n") -> list[str]:
    """Every provider-group variable; a numbered family's with ``number`` as its suffix."""
    return [family.variable(f.suffix, number) for family in FAMILIES for f in family.fields]


_FIXED_NAMES = frozenset(fixed_names())
_NUMBERED = tuple(family for family in FAMILIES if family.numbered)


def is_gateway_variable(name: str) -> bool:
    """Whether the gateway reads the variable ``name`` (an option, alias or group field)."""
    return name in _FIXED_NAMES or any(family.pattern.match(name) for family in _NUMBERED)


def variables_help() -> str:
    """The list of variables for ``--help``, by group, each with its help and default."""
    lines = ["environment variables (flags win; README.rst, 'Configuration reference', says more):"]
    for section, title in SECTIONS.items():
        lines.append(f"  {title}:")
        for option in OPTIONS:
            if option.section == section:
                lines.append(_help_line(option.name, _option_help(option)))
        if section == "providers":
            for family in FAMILIES:
                lines.append(f"    {family.variable('*', 'n')}: {family.help}")
                for group_field in family.fields:
                    text = group_field.help
                    if group_field.default:
                        text += f" (default {group_field.default})"
                    name = family.variable(group_field.suffix, "n")
                    lines.append(_help_line(name, text))
    return "\n".join(lines)


def _option_help(option: Option) -> str:
    default = option.show(option.default)
    text = f"{option.help}: {option.type.accepts}; default {default}"
    if option.flag:
        text += f"; flag {option.flag}"
    if option.aliases:
        text += f"; also read as {', '.join(option.aliases)}"
    return text


def _help_line(name: str, text: str) -> str:
    return textwrap.fill(
        text, width=100, initial_indent=f"    {name:<36} ", subsequent_indent=" " * 41
    )
