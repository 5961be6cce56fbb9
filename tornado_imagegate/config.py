"""The one validated, frozen settings object, built from the environment, an env file and flags."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pycurl

DEMO_MODEL = "imagegate-demo"
DEFAULT_SD_API_BASE = "https://sd.exacg.cc/api/v1/generate_image"
DEFAULT_SD_MODEL = "Z-Image"
GROUP_KINDS = ("chat", "openai-images", "siliconflow", "sd")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")

_GROUP_VAR = re.compile(r"^IMAGE_GEN_(MODEL|API_BASE|API_KEY|KIND)_([0-9]+)$")
_KEY_TEXT = re.compile(r"^[\x21-\x7e]+$")
_SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|PROXY|_URL|API_BASE)(_[0-9]+)?$")


def is_secret_variable(name: str) -> bool:
    """Whether a variable's value is a secret (or may hold one): never echoed, never logged."""
    return bool(_SECRET_NAME.search(name))


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every problem, each naming its variable."""

    def __init__(self, problems: list[str], groups: tuple[ProviderGroup, ...] = ()) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.groups = groups


@dataclass(frozen=True)
class ProviderGroup:
    """One configured image provider: its kind, endpoint, models and keys."""

    name: str
    kind: str
    models: tuple[str, ...]
    endpoint: str = ""
    keys: tuple[str, ...] = field(default=(), repr=False)
    model_variable: str = ""

    @property
    def owned_by(self) -> str:
        """The ``owned_by`` value of this group's models in ``/v1/models``."""
        return "imagegate" if self.kind == "demo" else self.name.lower().replace("_", "-")


@dataclass(frozen=True)
class OptimiserSettings:
    """The OpenAI-compatible LLM that rewrites prompts; no ``model`` means optimisation is off."""

    api_base: str = ""
    keys: tuple[str, ...] = field(default=(), repr=False)
    model: str = ""
    reasoning: bool = False

    @property
    def enabled(self) -> bool:
        """Whether prompts are sent to the LLM before generation."""
        return bool(self.model)


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to run, validated once at start-up."""

    host: str = "127.0.0.1"
    port: int = 8080
    client_keys: tuple[str, ...] = field(default=(), repr=False)
    client_keys_generated: bool = False
    groups: tuple[ProviderGroup, ...] = ()
    optimiser: OptimiserSettings = OptimiserSettings()
    public_base_url: str = ""
    image_proxy_secret: str = field(default="", repr=False)
    image_cache_max_bytes: int = 256 * 1024 * 1024
    image_cache_dir: str = ""
    image_cache_dir_max_bytes: int = 2 * 1024 * 1024 * 1024
    image_max_bytes: int = 32 * 1024 * 1024
    sd_steps: int = 8
    stream_reasoning: bool = True
    answer_task_requests: bool = True
    images_default_model: str = ""
    metrics_access: str = "loopback"
    shutdown_grace_seconds: float = 30.0
    event_loop: str = "uvloop"
    sd_model_index: int = 5
    image_proxy_allow_private_networks: bool = False
    llm_timeout: float = 30.0
    image_gen_timeout: float = 180.0
    image_fetch_timeout: float = 30.0
    upstream_max_clients: int = 1024
    upstream_proxy: str = field(default="", repr=False)
    image_fetch_proxy: str = field(default="", repr=False)
    max_client_connections: int = 0  # 0: sized from the descriptor limit at start-up
    key_allowed_fails: int = 3
    key_max_cooldown_seconds: float = 300.0
    cors_allow_origins: tuple[str, ...] = ("*",)
    sse_keepalive_seconds: float = 10.0
    log_level: str = "INFO"

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
        values = [*self.client_keys, *self.secret_material(), self.image_proxy_secret]
        for url in (self.upstream_proxy, self.image_fetch_proxy):
            parts = urlsplit(url) if "://" in url else None
            if parts is not None:
                values += [parts.username or "", parts.password or ""]
        return [value for value in values if value]

    @property
    def model_ids(self) -> list[str]:
        """Every model id, in configuration order."""
        return [model for group in self.groups for model in group.models]


# --- value parsers: each returns the parsed value or raises ValueError with a short reason ---


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(
            "must be a number" if kind is float else "must be a whole number"
        ) from None


def _positive_float(text: str) -> float:
    value = _number(text, float)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    value = _number(text, int)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _port(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _metrics_access(text: str) -> str:
    value = text.strip().lower()
    if value not in ("loopback", "public", "off"):
        raise ValueError("must be loopback, public or off")
    return value


def _event_loop(text: str) -> str:
    value = text.strip().lower()
    if value not in ("uvloop", "asyncio"):
        raise ValueError("must be uvloop or asyncio")
    return value


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise ValueError("must be one of " + ", ".join(LOG_LEVELS))
    return level


def _http_url(text: str) -> str:
    url = text.strip()
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (reading it validates the port)
    except ValueError:
        raise ValueError("must be an absolute http:// or https:// URL with a valid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    return url


def _base_url(text: str) -> str:
    url = _http_url(text)
    parts = urlsplit(url)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must be a plain base URL, without user, query or fragment")
    return url.rstrip("/")


def _upstream_proxy(text: str) -> str:
    value = text.strip()
    if value.lower() == "env":
        return "env"
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 (reading it validates the port)
    except ValueError:
        raise ValueError("must be env or a proxy URL with a valid port") from None
    if parts.scheme not in ("http", "https", "socks5", "socks5h") or not parts.hostname:
        raise ValueError("must be env or a proxy URL: http://, https://, socks5:// or socks5h://")
    return value


def _image_fetch_proxy(text: str) -> str:
    value = text.strip()
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 (reading it validates the port)
    except ValueError:
        raise ValueError("must be an http:// proxy URL with a valid port") from None
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        # Only an HTTP proxy that tunnels (CONNECT) lets the gateway pin the checked address.
        raise ValueError("must be an http:// proxy URL (host and port, no path)")
    if not libcurl_can_pin():
        # Never fetch through a proxy unchecked: without CONNECT_TO the proxy resolves names.
        raise ValueError(
            "needs libcurl 7.49 or later with CONNECT_TO, to pin each fetch to the address the "
            f"gateway checked; this one is libcurl {pycurl.version_info()[1]}"
        )
    return value


def libcurl_can_pin() -> bool:
    """Whether pycurl and libcurl can pin a connection to a checked address (CURLOPT_CONNECT_TO)."""
    return hasattr(pycurl, "CONNECT_TO") and pycurl.version_info()[2] >= 0x073100


# Values these parse are never echoed in a problem: URLs may carry user-info or a key.
_SECRET_PARSERS = (_http_url, _base_url, _upstream_proxy, _image_fetch_proxy)


def _host(text: str) -> str:
    host = text.strip()
    if not host:
        raise ValueError("must not be empty")
    return host


def split_list(text: str) -> tuple[str, ...]:
    """Split a comma-separated variable into its non-empty, stripped items."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def redact_url(url: str) -> str:
    """A URL fit for logs and reports: no user-info, query or fragment (they may carry keys)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    suffix = "?..." if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{suffix}"


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

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def raw(self, name: str) -> str:
        """A variable's text, stripped ("" when unset)."""
        return self.environ.get(name, "").strip()

    def keys(self, name: str, text: str | None = None) -> tuple[str, ...]:
        """The comma-separated keys of a variable; a key no HTTP header can carry is a problem.

        The problem names the key's position, never its value.
        """
        keys = split_list(self.raw(name) if text is None else text)
        for position, key in enumerate(keys, start=1):
            if not _KEY_TEXT.match(key):
                self.problems.append(
                    f"{name}: key #{position} holds a space, a control or a non-ASCII character"
                )
        return keys

    def value(self, name: str, parse: Callable[[str], Any], default: Any) -> Any:
        """A parsed variable, its default when unset; a bad value is noted as a problem."""
        text = self.raw(name)
        if not text:
            return default
        try:
            return parse(text)
        except ValueError as exc:
            # Secrets are not echoed, nor URLs: a query string or user-info may hold a key.
            secret = parse in _SECRET_PARSERS or is_secret_variable(name)
            shown = "" if secret else f" (got {_describe(text)})"
            self.problems.append(f"{name}: {exc}{shown}")
            return default


def _describe(text: str) -> str:
    """Quote a non-secret value for an error message, shortened."""
    shown = text if len(text) <= 40 else text[:37] + "..."
    return repr(shown)


def _read_groups(reader: _Reader) -> list[ProviderGroup]:
    groups: list[ProviderGroup] = []
    env = reader.environ

    flux = {part: reader.raw(f"FLUX_GEN_{part}") for part in ("MODEL", "API_BASE", "API_KEY")}
    if any(flux.values()):
        missing = [f"FLUX_GEN_{part}" for part, value in flux.items() if not value]
        if missing:
            reader.problems.append(
                f"{', '.join(missing)}: missing; the FLUX_GEN group needs FLUX_GEN_MODEL, "
                "FLUX_GEN_API_BASE and FLUX_GEN_API_KEY together"
            )
        else:
            endpoint = reader.value("FLUX_GEN_API_BASE", _http_url, "")
            groups.append(
                ProviderGroup(
                    name="FLUX_GEN",
                    kind="siliconflow",
                    models=split_list(flux["MODEL"]),
                    endpoint=endpoint,
                    keys=reader.keys("FLUX_GEN_API_KEY"),
                    model_variable="FLUX_GEN_MODEL",
                )
            )

    # The suffix is kept as written ("01" stays "01"), so names in messages match the variables.
    numbers = sorted({m.group(2) for name in env if (m := _GROUP_VAR.match(name))}, key=int)
    for n in numbers:
        names = {part: f"IMAGE_GEN_{part}_{n}" for part in ("MODEL", "API_BASE", "API_KEY", "KIND")}
        values = {part: reader.raw(var) for part, var in names.items()}
        if not any(values.values()):
            continue
        missing = [names[p] for p in ("MODEL", "API_BASE", "API_KEY") if not values[p]]
        if missing:
            reader.problems.append(
                f"{', '.join(missing)}: missing; group IMAGE_GEN_{n} needs IMAGE_GEN_MODEL_{n}, "
                f"IMAGE_GEN_API_BASE_{n} and IMAGE_GEN_API_KEY_{n} together"
            )
            continue
        kind = (values["KIND"] or "chat").lower()
        if kind not in GROUP_KINDS:
            reader.problems.append(
                f"{names['KIND']}: must be one of {', '.join(GROUP_KINDS)} (got {_describe(kind)})"
            )
            continue
        groups.append(
            ProviderGroup(
                name=f"IMAGE_GEN_{n}",
                kind=kind,
                models=split_list(values["MODEL"]),
                endpoint=reader.value(names["API_BASE"], _http_url, ""),
                keys=reader.keys(names["API_KEY"]),
                model_variable=names["MODEL"],
            )
        )

    sd_key = reader.raw("SD_API_KEY")
    if sd_key:
        groups.append(
            ProviderGroup(
                name="SD",
                kind="sd",
                models=split_list(reader.raw("SD_MODEL") or DEFAULT_SD_MODEL),
                endpoint=reader.value("SD_API_BASE", _http_url, DEFAULT_SD_API_BASE),
                keys=reader.keys("SD_API_KEY"),
                model_variable="SD_MODEL",
            )
        )
    elif reader.raw("SD_API_BASE") or reader.raw("SD_MODEL"):
        reader.problems.append("SD_API_KEY: missing; SD_API_BASE or SD_MODEL is set without it")

    for group in groups:
        if not group.models:
            reader.problems.append(f"{group.model_variable}: lists no model id")
        if not group.keys:
            reader.problems.append(f"group {group.name}: its key variable lists no key")

    groups.append(ProviderGroup(name="demo", kind="demo", models=(DEMO_MODEL,)))
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
    return groups


def _read_optimiser(reader: _Reader) -> OptimiserSettings:
    plain = reader.raw("OPENAI_MODEL")
    reasoning = reader.raw("OPENAI_MODEL_REASONING")
    if plain and reasoning:
        reader.problems.append(
            "OPENAI_MODEL, OPENAI_MODEL_REASONING: set one of them, not both "
            "(OPENAI_MODEL for a plain model, OPENAI_MODEL_REASONING for a thinking model)"
        )
        return OptimiserSettings()
    model = plain or reasoning
    if not model:
        return OptimiserSettings()
    variable = "OPENAI_MODEL" if plain else "OPENAI_MODEL_REASONING"
    api_base = reader.value("OPENAI_API_BASE", _base_url, "")
    keys = reader.keys("OPENAI_API_KEY")
    if not reader.raw("OPENAI_API_BASE"):
        reader.problems.append(f"OPENAI_API_BASE: missing; {variable} is set and needs it")
    if not keys:
        reader.problems.append(f"OPENAI_API_KEY: missing; {variable} is set and needs it")
    return OptimiserSettings(api_base=api_base, keys=keys, model=model, reasoning=bool(reasoning))


def load_settings(
    environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build and validate the settings; raise ConfigError listing every problem found."""
    reader = _Reader(environ)
    defaults = Settings()
    values: dict[str, Any] = {
        "host": reader.value("IMAGEGATE_HOST", _host, defaults.host),
        "port": reader.value("IMAGEGATE_PORT", _port, defaults.port),
        "public_base_url": reader.value("PUBLIC_BASE_URL", _base_url, ""),
        "image_proxy_secret": reader.raw("IMAGE_PROXY_SECRET"),
        "image_cache_max_bytes": reader.value(
            "IMAGE_CACHE_MAX_BYTES", _positive_int, defaults.image_cache_max_bytes
        ),
        "image_cache_dir": reader.raw("IMAGE_CACHE_DIR"),
        "image_cache_dir_max_bytes": reader.value(
            "IMAGE_CACHE_DIR_MAX_BYTES", _positive_int, defaults.image_cache_dir_max_bytes
        ),
        "sd_steps": reader.value("SD_STEPS", _positive_int, defaults.sd_steps),
        "stream_reasoning": reader.value("STREAM_REASONING", _boolean, True),
        "answer_task_requests": reader.value("ANSWER_TASK_REQUESTS", _boolean, True),
        "images_default_model": reader.raw("IMAGES_DEFAULT_MODEL"),
        "metrics_access": reader.value("METRICS_ACCESS", _metrics_access, "loopback"),
        "shutdown_grace_seconds": reader.value(
            "SHUTDOWN_GRACE_SECONDS", _positive_float, defaults.shutdown_grace_seconds
        ),
        "event_loop": reader.value("EVENT_LOOP", _event_loop, defaults.event_loop),
        "sd_model_index": reader.value(
            "SD_MODEL_INDEX", _non_negative_int, defaults.sd_model_index
        ),
        "image_max_bytes": reader.value("IMAGE_MAX_BYTES", _positive_int, defaults.image_max_bytes),
        "image_proxy_allow_private_networks": reader.value(
            "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS", _boolean, False
        ),
        "llm_timeout": reader.value("LLM_TIMEOUT", _positive_float, defaults.llm_timeout),
        "image_gen_timeout": reader.value(
            "IMAGE_GEN_TIMEOUT", _positive_float, defaults.image_gen_timeout
        ),
        "image_fetch_timeout": reader.value(
            "IMAGE_FETCH_TIMEOUT", _positive_float, defaults.image_fetch_timeout
        ),
        "upstream_max_clients": reader.value(
            "UPSTREAM_MAX_CLIENTS", _positive_int, defaults.upstream_max_clients
        ),
        "upstream_proxy": reader.value("UPSTREAM_PROXY", _upstream_proxy, ""),
        "image_fetch_proxy": reader.value("IMAGE_FETCH_PROXY", _image_fetch_proxy, ""),
        "max_client_connections": reader.value(
            "MAX_CLIENT_CONNECTIONS", _positive_int, defaults.max_client_connections
        ),
        "key_allowed_fails": reader.value(
            "KEY_ALLOWED_FAILS", _positive_int, defaults.key_allowed_fails
        ),
        "key_max_cooldown_seconds": reader.value(
            "KEY_MAX_COOLDOWN_SECONDS", _positive_float, defaults.key_max_cooldown_seconds
        ),
        "cors_allow_origins": split_list(reader.raw("CORS_ALLOW_ORIGINS") or "*"),
        "sse_keepalive_seconds": reader.value(
            "SSE_KEEPALIVE_SECONDS", _positive_float, defaults.sse_keepalive_seconds
        ),
        "log_level": reader.value("LOG_LEVEL", _log_level, defaults.log_level),
    }
    # GATEWAY_API_KEY is an alias; both set is almost always a leftover, and joining them keeps
    # both working.
    client_keys = tuple(
        dict.fromkeys(reader.keys("AUTHORIZED_API_KEY") + reader.keys("GATEWAY_API_KEY"))
    )
    values["client_keys"] = client_keys
    values["optimiser"] = _read_optimiser(reader)
    groups = _read_groups(reader)
    values["groups"] = tuple(groups)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    default_model = values["images_default_model"]
    if default_model and not any(default_model in group.models for group in groups):
        reader.problems.append(
            f"IMAGES_DEFAULT_MODEL: {default_model!r} is not a configured model id"
        )
    if not client_keys and not is_loopback_host(values["host"]):
        reader.problems.append(
            f"AUTHORIZED_API_KEY: not set, so the gateway may only listen on loopback; "
            f"set a client key to listen on {values['host']} (IMAGEGATE_HOST / --host)"
        )
    if reader.problems:
        raise ConfigError(reader.problems, tuple(groups))
    return Settings(**values)
