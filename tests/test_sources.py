"""Unit tests of tornado_imagegate.sources: the systemd env file and credentials readers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tornado_imagegate.config import ConfigError
from tornado_imagegate.sources import read_env_file

# --- read_env_file ---


def test_read_env_file_syntax(tmp_path: Path) -> None:
    path = tmp_path / "gateway.env"
    path.write_text(
        "# a comment\n"
        "; another comment\n"
        "\n"
        "   \n"
        "PLAIN=value\n"
        "  SPACED  =  spaced value  \n"
        'DOUBLE="double quoted # not a comment"\n'
        'ESCAPED="say \\"hi\\""\n'
        "SINGLE='single $quoted'\n"
        "EMPTY=\n"
        "WITH_EQUALS=a=b=c\n"
        "   # indented comment\n",
        encoding="utf-8",
    )
    assert read_env_file(str(path)) == {
        "PLAIN": "value",
        "SPACED": "spaced value",
        "DOUBLE": "double quoted # not a comment",
        "ESCAPED": 'say "hi"',
        "SINGLE": "single $quoted",
        "EMPTY": "",
        "WITH_EQUALS": "a=b=c",
    }


def test_read_env_file_later_line_wins(tmp_path: Path) -> None:
    path = tmp_path / "gateway.env"
    path.write_text("A=1\nA=2\n", encoding="utf-8")
    assert read_env_file(str(path)) == {"A": "2"}


@pytest.mark.parametrize(
    ("content", "line"),
    [
        ("A=1\njust some words\n", 2),
        ("A=1\n\n# c\n=value\n", 4),
        ("1BAD=x\n", 1),
        ("A=1\nB=2\nBAD NAME=3\n", 3),
    ],
)
def test_read_env_file_malformed_line(tmp_path: Path, content: str, line: int) -> None:
    path = tmp_path / "broken.env"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_env_file(str(path))
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert str(path) in problem
    assert f"line {line}" in problem
    assert "--env-file" in problem


def test_read_env_file_reports_every_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.env"
    path.write_text("bad one\nA=1\nbad two\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_env_file(str(path))
    assert len(info.value.problems) == 2
    assert "line 1" in info.value.problems[0]
    assert "line 3" in info.value.problems[1]


def test_read_env_file_malformed_line_does_not_echo_its_content(tmp_path: Path) -> None:
    path = tmp_path / "broken.env"
    path.write_text("OPENAI_API_KEY sk-SECRET-typo\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_env_file(str(path))
    assert "sk-SECRET-typo" not in str(info.value)


def test_read_env_file_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.env"
    with pytest.raises(ConfigError) as info:
        read_env_file(str(path))
    assert "--env-file" in str(info.value)
    assert str(path) in str(info.value)


def test_read_env_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.env"
    path.write_bytes(b"A=caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        read_env_file(str(path))
    assert "--env-file" in str(info.value)
