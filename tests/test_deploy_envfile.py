"""The env file is read the way docker compose reads `.env` (python-dotenv's parser).

Each row is one line of an env file and the value docker compose gives the
variable. Rows marked `compose differs` are where python-dotenv (and so
switchctl) is known to differ from compose; they pin switchctl's behaviour.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from switchctl.deploy.config import read_env_file
from switchctl.deploy.errors import DeployConfigError


def read(tmp_path: Path, text: str) -> dict[str, str]:
    p = tmp_path / "app.env"
    p.write_text(text)
    p.chmod(0o600)
    return read_env_file(p, []).values


# (env-file text, variable, expected value)
TABLE: list[tuple[str, str, str]] = [
    # plain, spaces around =, export prefix
    ("A=plain\n", "A", "plain"),
    ("A = spaced \n", "A", "spaced"),
    ("export A=exported\n", "A", "exported"),
    # inline comments: after whitespace on an unquoted value, or after a closing quote
    ("URL=postgres://db/shop # prod db\n", "URL", "postgres://db/shop"),
    ("A=no#comment\n", "A", "no#comment"),
    ('A="quoted" # comment\n', "A", "quoted"),
    ('A="has # inside"\n', "A", "has # inside"),
    # double quotes unescape; single quotes are literal
    ('A="line1\\nline2"\n', "A", "line1\nline2"),
    ('A="tab\\there \\"q\\" back\\\\slash"\n', "A", 'tab\there "q" back\\slash'),
    ("A='line1\\nline2'\n", "A", "line1\\nline2"),
    # unquoted values keep backslashes
    ("A=c:\\path\n", "A", "c:\\path"),
    # ${VAR} and ${VAR:-default}, from earlier lines, then the process environment
    ("HOST=db\nURL=postgres://${HOST}:5432\n", "URL", "postgres://db:5432"),
    ("URL=${UNSET_X:-fallback}/x\n", "URL", "fallback/x"),
    ("URL=${UNSET_X}/x\n", "URL", "/x"),
    ("URL=${FROM_PROCESS}\n", "URL", "proc"),
    ("FROM_PROCESS=file\nURL=${FROM_PROCESS}\n", "URL", "file"),
    ('HOST=db\nURL="${HOST}:1"\n', "URL", "db:1"),
    # single quotes: no expansion (python-dotenv alone would expand; compose does not)
    ("HOST=db\nURL='${HOST}:1'\n", "URL", "${HOST}:1"),
    # multi-line values in quotes
    (
        'KEY="-----BEGIN KEY-----\nabc\n-----END KEY-----"\n',
        "KEY",
        "-----BEGIN KEY-----\nabc\n-----END KEY-----",
    ),
    ("KEY='a\nb'\n", "KEY", "a\nb"),
    # empty values
    ("A=\n", "A", ""),
    ('A=""\n', "A", ""),
    # a bare KEY passes the process environment's value through (compose's env_file rule)
    ("FROM_PROCESS\n", "FROM_PROCESS", "proc"),
    # compose differs: compose expands $VAR without braces; python-dotenv keeps it
    ("HOST=db\nURL=$HOST\n", "URL", "$HOST"),
]


@pytest.mark.parametrize(("text", "key", "expected"), TABLE)
def test_env_file_values_are_what_docker_compose_gives(
    text: str, key: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROM_PROCESS", "proc")
    monkeypatch.delenv("UNSET_X", raising=False)
    assert read(tmp_path, text)[key] == expected


def test_a_bare_key_unset_in_the_environment_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    assert read(tmp_path, "NOT_SET_ANYWHERE\nB=1\n") == {"B": "1"}


def test_an_unterminated_quote_is_reported_with_its_line_and_not_its_value(tmp_path: Path) -> None:
    with pytest.raises(DeployConfigError) as e:
        read(tmp_path, 'A=1\nB="secret-ish\n')
    p = tmp_path / "app.env"
    assert e.value.problems == [f"env_file {p}:2: expected KEY=VALUE (the value is not shown)"]
    assert "secret-ish" not in str(e.value)


def test_the_process_environment_fills_variables_when_reading_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWITCHCTL_TEST_HOST", "db.internal")
    values = read(tmp_path, "DATABASE_URL=postgres://${SWITCHCTL_TEST_HOST}/shop # prod db\n")
    assert values == {"DATABASE_URL": "postgres://db.internal/shop"}
