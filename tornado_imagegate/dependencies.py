"""The libraries start-up needs, loaded first: a missing one is named with what to install."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    """A library the gateway imports at start-up, the package that provides it, and the
    system library it loads, if any."""

    module: str
    package: str
    system_library: str = ""
    system_install: str = ""


REQUIREMENTS = (
    Requirement("tornado", "tornado"),
    Requirement(
        "pycurl",
        "pycurl",
        system_library="libcurl",
        system_install="Debian/Ubuntu: apt install libcurl4; Fedora: dnf install libcurl",
    ),
    Requirement("cachetools", "cachetools"),
    Requirement("prometheus_client", "prometheus-client"),
    Requirement("redis", "redis"),
    Requirement("pybase64", "pybase64"),
    Requirement("orjson", "orjson"),
)
REINSTALL = "pip install --force-reinstall tornado-imagegate"


class MissingDependency(SystemExit):
    """Start-up stops here: its message (printed without a traceback) says what to install."""


def missing_text(requirement: Requirement, exc: ImportError) -> str:
    """One line for a library that failed to import: what is missing and how to install it."""
    reason = str(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        missing = exc.name.split(".")[0]
        if missing == requirement.module:
            return (
                f"imagegate: the Python package {requirement.package} is not installed:"
                f" pip install {requirement.package} (or reinstall the gateway: {REINSTALL})"
            )
        return (
            f"imagegate: {requirement.package} needs the Python module {missing}, which is not"
            f" installed: pip install --force-reinstall {requirement.package}"
        )
    if requirement.system_library:
        return (
            f"imagegate: {requirement.package} could not be loaded ({reason}): install your"
            f" system's {requirement.system_library} ({requirement.system_install}), then"
            f" reinstall {requirement.package}: pip install --force-reinstall --no-cache-dir"
            f" {requirement.package}"
        )
    return (
        f"imagegate: {requirement.package} could not be loaded ({reason}):"
        f" pip install --force-reinstall {requirement.package}"
    )


def require(requirements: tuple[Requirement, ...] = REQUIREMENTS) -> None:
    """Import each required library once; raise MissingDependency naming the first that fails."""
    for requirement in requirements:
        try:
            importlib.import_module(requirement.module)
        except ImportError as exc:
            raise MissingDependency(missing_text(requirement, exc)) from None


require()
