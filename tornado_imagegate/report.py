"""The ``--check-config`` report: every provider, model and problem, never a secret."""

from __future__ import annotations

from tornado_imagegate import __version__
from tornado_imagegate.config import ProviderGroup, Settings, redact_url
from tornado_imagegate.provider_kinds import provider_kind


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def describe_groups(groups: tuple[ProviderGroup, ...]) -> list[str]:
    """One block per provider group: kind and what it is, endpoint without secrets, keys, models."""
    lines = []
    for group in groups:
        kind = provider_kind(group.kind)
        if kind.local:
            lines.append(f"  {group.name}: {kind.description}")
        else:
            lines.append(
                f"  {group.name}: kind {group.kind} ({kind.description}), "
                f"{redact_url(group.endpoint)}, {_plural(len(group.keys), 'key')}"
            )
        lines.append(f"    models: {', '.join(group.models) or '(none)'}")
    return lines


def proxy_line(proxy: str) -> str:
    """A proxy setting for the report: none, the environment's, or its URL without user-info."""
    if not proxy:
        return "none"
    if proxy == "env":
        return "from the environment (http_proxy, https_proxy, all_proxy, no_proxy)"
    return redact_url(proxy)


def settings_report(settings: Settings) -> str:
    """The report of a valid configuration."""
    optimiser = settings.optimiser
    if optimiser.enabled:
        mode = "reasoning" if optimiser.reasoning else "non-reasoning"
        optimiser_line = (
            f"on, {mode} model {optimiser.model} at {redact_url(optimiser.api_base)}, "
            f"{_plural(len(optimiser.keys), 'key')}"
        )
    else:
        optimiser_line = "off (prompts go to the image model as written)"
    if settings.client_keys:
        keys_line = f"{_plural(len(settings.client_keys), 'client key')} configured"
    else:
        keys_line = "none configured: one is generated at start-up (loopback only)"
    cache_disk = settings.image_cache_dir or "off (memory only)"
    lines = [
        f"tornado-imagegate {__version__}: configuration is valid",
        f"listen: {settings.host}:{settings.port}",
        f"client keys: {keys_line}",
        f"public base URL: {settings.public_base_url or '(from each request)'}",
        f"prompt optimiser: {optimiser_line}",
        "providers:",
        *describe_groups(settings.groups),
        f"image cache: {settings.image_cache_max_bytes} bytes in memory, disk tier: {cache_disk}",
        f"image proxy secret: {'set' if settings.image_proxy_secret else 'derived'}",
        f"private networks for image fetches: "
        f"{'allowed' if settings.image_proxy_allow_private_networks else 'refused'}",
        f"timeouts: LLM {settings.llm_timeout:g}s, generation {settings.image_gen_timeout:g}s, "
        f"image fetch {settings.image_fetch_timeout:g}s",
        f"upstream connections: {settings.upstream_max_clients}",
        f"outbound proxy for provider and optimiser calls: {proxy_line(settings.upstream_proxy)}",
        f"proxy for image fetches: {proxy_line(settings.image_fetch_proxy)}",
        "client connections: at most "
        + (
            str(settings.max_client_connections)
            if settings.max_client_connections
            else "as many as the descriptor limit allows"
        ),
        f"key cooldowns: after {settings.key_allowed_fails} transient failures a minute; "
        f"Retry-After capped at {settings.key_max_cooldown_seconds:g}s",
        f"event loop: {settings.event_loop}",
        f"CORS origins: {', '.join(settings.cors_allow_origins)}",
        f"log level: {settings.log_level}",
    ]
    return "\n".join(lines)


def problems_report(problems: list[str], groups: tuple[ProviderGroup, ...]) -> str:
    """The report of an invalid configuration: what could be read, then every problem."""
    lines = [f"tornado-imagegate {__version__}: configuration is NOT valid"]
    if groups:
        lines += ["providers read so far:", *describe_groups(groups)]
    lines.append(f"{_plural(len(problems), 'problem')}:")
    lines += [f"  - {problem}" for problem in problems]
    return "\n".join(lines)
