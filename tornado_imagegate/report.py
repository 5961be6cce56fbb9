"""The ``--check-config`` report: every provider, model and problem, never a secret."""

from __future__ import annotations

import os
from dataclasses import fields

from tornado_imagegate import __version__
from tornado_imagegate.config import ProviderGroup, Settings
from tornado_imagegate.datadir import CLIENT_KEY_FILE, images_dir
from tornado_imagegate.options import OPTIONS, SECTIONS
from tornado_imagegate.provider_kinds import provider_kind
from tornado_imagegate.values import redact_url, show_json_object

# Shown in the summary at the top, so not again among the settings.
_SUMMARISED = ("IMAGEGATE_HOST", "IMAGEGATE_PORT", "AUTHORIZED_API_KEY", "IMAGEGATE_DATA_DIR")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _answers(polls: bool) -> str:
    if not polls:
        return "at once (no polling)"
    return "with a task, polled until it is done (within IMAGE_GEN_TIMEOUT)"


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
            lines.append(f"    answers: {_answers(kind.polls)}")
            takes = group.image_inputs
            lines.append(f"    input images: {f'up to {takes}' if takes else 'none'}")
            if takes:
                masked = [model for model in group.models if group.takes_mask(model)]
                lines.append(f"    edit masks: {', '.join(masked) or 'none'}")
            if group.extra:
                lines.append(f"    extra request fields: {show_json_object(dict(group.extra))}")
        lines.append(f"    models: {', '.join(group.models) or '(none)'}")
    return lines


def settings_report(settings: Settings) -> str:
    """The report of a valid configuration: a summary, then every setting by group."""
    optimiser = settings.optimiser
    if optimiser.enabled:
        mode = "reasoning" if optimiser.reasoning else "non-reasoning"
        optimiser_line = (
            f"on, {mode} model {optimiser.model} at {redact_url(optimiser.endpoint)}, "
            f"{_plural(len(optimiser.keys), 'key')}"
        )
    else:
        optimiser_line = "off (prompts go to the image model as written)"
    if settings.client_keys:
        keys_line = f"{_plural(len(settings.client_keys), 'client key')} configured"
    elif settings.data_dir and os.path.exists(os.path.join(settings.data_dir, CLIENT_KEY_FILE)):
        keys_line = (
            f"none configured: the one kept in {os.path.join(settings.data_dir, CLIENT_KEY_FILE)} "
            "is used (loopback only)"
        )
    else:
        keys_line = "none configured: one is generated at start-up (loopback only)"
    lines = [
        f"tornado-imagegate {__version__}: configuration is valid",
        f"listen: {settings.host}:{settings.port}",
        f"client keys: {keys_line}",
        f"data directory: {data_dir_line(settings)}",
        f"prompt optimiser: {optimiser_line}",
        "providers:",
        *describe_groups(settings.groups),
        "settings:",
        *describe_settings(settings),
    ]
    return "\n".join(lines + _warning_lines(settings.warnings))


def data_dir_line(settings: Settings) -> str:
    """Where state is kept between runs, and which of it is kept there."""
    directory = settings.data_dir
    if not directory:
        return "none, memory only (IMAGEGATE_DATA_DIR): nothing generated outlives the process"
    kept = []
    if not settings.client_keys:
        kept.append("the generated client key")
    if not settings.image_proxy_secret:
        kept.append("the link-signing secret")
    if settings.image_cache_dir == images_dir(directory):
        kept.append("the images")
    what = ", ".join(kept) if kept else "nothing, as configured"
    return f"{directory} (IMAGEGATE_DATA_DIR), keeps {what}"


def describe_settings(settings: Settings) -> list[str]:
    """Each setting of the option table, by group: what it is, its value and its variable."""
    bound = {
        each.metadata["option"].name: getattr(settings, each.name)
        for each in fields(settings)
        if "option" in each.metadata
    }
    lines = []
    for section, title in SECTIONS.items():
        shown = [
            f"    {option.help}: {option.show(bound[option.name])} ({option.name})"
            for option in OPTIONS
            if option.section == section and option.name in bound and option.name not in _SUMMARISED
        ]
        if shown:
            lines += [f"  {title}:", *shown]
    return lines


def problems_report(
    problems: list[str], groups: tuple[ProviderGroup, ...], warnings: tuple[str, ...] = ()
) -> str:
    """The report of an invalid configuration: what could be read, then every problem."""
    lines = [f"tornado-imagegate {__version__}: configuration is NOT valid"]
    if groups:
        lines += ["providers read so far:", *describe_groups(groups)]
    lines.append(f"{_plural(len(problems), 'problem')}:")
    lines += [f"  - {problem}" for problem in problems]
    return "\n".join(lines + _warning_lines(warnings))


def _warning_lines(warnings: tuple[str, ...]) -> list[str]:
    if not warnings:
        return []
    return [f"{_plural(len(warnings), 'warning')}:", *(f"  - {warning}" for warning in warnings)]
