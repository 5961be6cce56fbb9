"""Variables that look like the gateway's but are not one, each named with the closest real name.

A variable is a near miss when the gateway does not read it and either

- it is within a small edit distance of one of the gateway's names (one edit for names of up to
  ten characters, two for longer ones; case ignored; a swap of two neighbours is one edit),
  also once a trailing number is taken off (``IMAGE_GEN_KIND2`` is ``IMAGE_GEN_KIND_2``,
  ``FLUX_GEN_MODEL_1`` is ``FLUX_GEN_MODEL``), or
- its name starts with a prefix only the gateway uses (``IMAGEGATE_``, ``FLUX_GEN_``,
  ``IMAGE_GEN_``).

Other programs' variables that merely share a prefix (``OPENAI_ORG_ID``, ``SD_CARD``,
``IMAGE_MAGICK_HOME``) are not near misses; neither is a variable set to an empty value, nor
``IMAGEGATE_KEY``, which the README has people export for their clients (curl, the SDKs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tornado_imagegate.options import FAMILIES, fixed_names, is_gateway_variable

OWN_PREFIXES = ("IMAGEGATE_", "FLUX_GEN_", "IMAGE_GEN_")
# Set in a user's shell for the clients, not read by the gateway: the README's curl example.
CLIENT_SIDE_VARIABLES = frozenset({"IMAGEGATE_KEY"})
_TRAILING_NUMBER = re.compile(r"^(.*?)_?([0-9]+)$")
_FIXED = tuple(fixed_names())
# A numbered family's variables without their number: IMAGE_GEN_MODEL for IMAGE_GEN_MODEL_n.
_NUMBERED_STEMS = tuple(
    f"{family.prefix}_{f.suffix}" for family in FAMILIES if family.numbered for f in family.fields
)


def closest_variable(name: str) -> str | None:
    """The gateway variable that ``name`` is a near miss of, or None when it is not one."""
    if is_gateway_variable(name):
        return None
    upper = name.upper()
    # (distance, preference, suggestion): the whole name first, then a numbered group's name.
    found = [(d, 0, real) for real in _FIXED if (d := _distance(upper, real)) is not None]
    numbered = _TRAILING_NUMBER.match(upper)
    if numbered:
        stem, number = numbered.groups()
        found += [
            (d, 1, f"{real}_{number}")
            for real in _NUMBERED_STEMS
            if (d := _distance(stem, real)) is not None
        ]
        found += [(d, 2, real) for real in _FIXED if (d := _distance(stem, real)) is not None]
    return min(found)[2] if found else None


def near_miss(name: str) -> str | None:
    """Why variable ``name`` looks wrong (naming it, never its value), or None if it does not."""
    if name.upper() in CLIENT_SIDE_VARIABLES:
        return None
    guess = closest_variable(name)
    if guess is not None:
        return f"{name}: not a variable the gateway reads; did you mean {guess}?"
    if not is_gateway_variable(name) and name.upper().startswith(OWN_PREFIXES):
        return f"{name}: not a variable the gateway reads (imagegate --help lists them)"
    return None


def near_misses(environ: Mapping[str, str]) -> list[str]:
    """One message per near miss set to a non-empty value in ``environ``, sorted by name."""
    return [
        message
        for name in sorted(environ)
        if environ[name].strip() and (message := near_miss(name)) is not None
    ]


def without_gateway_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without what the gateway reads or reports: for tests and benches."""
    return {
        name: value
        for name, value in environ.items()
        if not is_gateway_variable(name) and near_miss(name) is None
    }


def _distance(text: str, real: str) -> int | None:
    """The edit distance (with swaps) of two names, or None when it is over ``real``'s allowance."""
    limit = 1 if len(real) <= 10 else 2
    if abs(len(text) - len(real)) > limit:
        return None
    previous2: list[int] = []
    previous = list(range(len(real) + 1))
    for i, a in enumerate(text, start=1):
        current = [i] + [0] * len(real)
        for j, b in enumerate(real, start=1):
            current[j] = min(
                previous[j] + 1,
                current[j - 1] + 1,
                previous[j - 1] + (a != b),
            )
            if i > 1 and j > 1 and a == real[j - 2] and text[i - 2] == b:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return None
        previous2, previous = previous, current
    return previous[-1] if previous[-1] <= limit else None


def throwaway_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the gateway's variables and with no data directory: a gateway run
    with it keeps nothing between runs, and never writes into the home directory."""
    return {**without_gateway_variables(environ), "IMAGEGATE_DATA_DIR": ""}
