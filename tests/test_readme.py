"""README.rst and CHANGELOG.rst render on PyPI (and GitHub) without a warning."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from docutils import nodes
from docutils.core import publish_doctree
from readme_renderer.rst import render

ROOT = Path(__file__).resolve().parent.parent

# A bullet whose continuation line starts at column 0: docutils warns that the list ends without
# a blank line, and PyPI refuses to render the whole page.
BROKEN_LIST = """\
Title
=====

- a bullet whose text goes on
past the indentation of its list;
- another bullet
"""

# A line at column 0 inside a variable's description ends the description without a warning: the
# rest of it becomes a new entry whose term is prose.
BROKEN_DESCRIPTION = """\
``IMAGE_MAX_BYTES``
    the largest image the gateway
fetches, in bytes, checked against
    Content-Length and the bytes received
"""


def render_problems(text: str) -> str:
    """What PyPI's renderer says about ``text``: empty when it renders without a warning."""
    warnings = io.StringIO()
    html = render(text, stream=warnings)
    if html is None:
        return warnings.getvalue() or "nothing rendered"
    return warnings.getvalue()


def prose_terms(text: str) -> list[str]:
    """Terms of the definition lists in ``text`` that do not start with ``code``: broken entries."""
    tree = publish_doctree(text, settings_overrides={"report_level": 5})
    return [
        term.astext()
        for term in tree.findall(nodes.term)
        if not isinstance(term.children[0], nodes.literal)
    ]


@pytest.mark.parametrize("name", ["README.rst", "CHANGELOG.rst"])
def test_document_renders_without_a_warning(name: str) -> None:
    problems = render_problems((ROOT / name).read_text(encoding="utf-8"))
    assert problems == "", f"{name} does not render cleanly:\n{problems}"


def test_a_list_broken_by_an_unindented_line_is_caught() -> None:
    assert "Bullet list ends without a blank line" in render_problems(BROKEN_LIST)


def test_every_described_name_in_readme_is_a_whole_entry() -> None:
    assert prose_terms((ROOT / "README.rst").read_text(encoding="utf-8")) == []


def test_a_description_broken_by_an_unindented_line_is_caught() -> None:
    assert render_problems(BROKEN_DESCRIPTION) == ""
    assert prose_terms(BROKEN_DESCRIPTION) == ["fetches, in bytes, checked against"]


def test_the_package_metadata_renders_the_readme() -> None:
    setup_cfg = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    assert "long_description = file: README.rst" in setup_cfg
    assert "long_description_content_type = text/x-rst" in setup_cfg
