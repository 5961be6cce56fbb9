"""Where variables come from besides the environment: a systemd env file and its credentials."""

from __future__ import annotations

import os
import re

from tornado_imagegate.config import ConfigError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def read_env_file(path: str) -> dict[str, str]:
    """Parse a systemd ``EnvironmentFile=``: KEY=VALUE lines, ``#`` comments, optional quotes."""
    values: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ConfigError([f"--env-file: cannot read {path}: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"--env-file: {path} is not UTF-8 text"]) from None
    problems = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        name, sep, value = stripped.partition("=")
        name = name.strip()
        if not sep or not _ENV_NAME.match(name):
            problems.append(f"--env-file: {path} line {number} is not KEY=VALUE")
            continue
        values[name] = _unquote(value.strip())
    if problems:
        raise ConfigError(problems)
    return values


def read_credentials(directory: str) -> dict[str, str]:
    """Secrets passed by systemd's ``LoadCredential=``: one file per variable, named after it."""
    values: dict[str, str] = {}
    if not directory:
        return values
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise ConfigError([f"CREDENTIALS_DIRECTORY: cannot read it: {exc.strerror}"]) from None
    for name in names:
        if not _ENV_NAME.match(name):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                values[name] = handle.read().strip()
        except (OSError, UnicodeDecodeError):
            raise ConfigError([f"{name}: its credential file cannot be read"]) from None
    return values


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        if value[0] == '"':
            inner = re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), inner)
        return inner
    return value
