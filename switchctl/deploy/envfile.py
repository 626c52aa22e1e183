"""The app's env file, read the way docker compose reads a `.env` file.

Parsing is python-dotenv's (quotes, `export`, inline comments, escapes in
double quotes, multi-line quoted values); this module adds what compose does
on top and python-dotenv does not:

- a single-quoted value is literal: `${VAR}` inside it is not expanded;
- a bare `KEY` line (no `=`) passes `KEY` through from switchctl's own
  environment, and is left out when that is unset.

`${VAR}` and `${VAR:-default}` are expanded from the variables above in the
same file, then from switchctl's environment (compose's order). Known
differences from compose that remain: `$VAR` without braces, `${VAR-default}`
(no colon) and `${VAR:?error}` are not expanded; in double quotes, `\\$` is
kept as two characters.

The values are secrets: they are never printed, and `EnvFile.__repr__` hides them.
"""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path

from dotenv.parser import parse_stream
from dotenv.variables import parse_variables

from switchctl.deploy.errors import DeployConfigError

ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SINGLE_QUOTED = re.compile(r"^\s*(?:export\s+)?[^=]*?\s*=\s*'")


class EnvFile:
    """The variables of an env file. Values are secrets."""

    def __init__(self, path: Path, values: dict[str, str]) -> None:
        self.path = path
        self.values = values

    def __repr__(self) -> str:
        return f"EnvFile({str(self.path)!r}, {len(self.values)} variables)"

    def as_list(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values.items()]


def parse_env(text: str, source: str, environ: dict[str, str] | None = None) -> EnvFile:
    """Parse env-file text like compose; raise DeployConfigError naming each bad line."""
    env = dict(os.environ) if environ is None else environ
    values: dict[str, str] = {}
    problems: list[str] = []
    for b in parse_stream(io.StringIO(text)):
        line = b.original.line
        if b.error:
            problems.append(
                f"env_file {source}:{line}: expected KEY=VALUE (the value is not shown)"
            )
            continue
        if b.key is None:
            continue  # a blank or comment line
        if not ENV_KEY_RE.match(b.key):
            problems.append(
                f"env_file {source}:{line}: {b.key!r} is not a variable name "
                "(letters, digits and _, not starting with a digit)"
            )
            continue
        if b.value is None:  # a bare KEY: compose passes it through from the environment
            if b.key in env:
                values[b.key] = env[b.key]
            continue
        if _SINGLE_QUOTED.match(b.original.string):
            values[b.key] = b.value
        else:
            lookup = {**env, **values}
            values[b.key] = "".join(atom.resolve(lookup) for atom in parse_variables(b.value))
    if problems:
        raise DeployConfigError(problems)
    return EnvFile(Path(source), values)


def read_env_file(path: Path, required: list[str], check_mode: bool = True) -> EnvFile:
    """Read the env file; its mode must be 0600 (or stricter) and every required key set."""
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as e:
        raise DeployConfigError(
            [f"env_file {path}: cannot read it ({e.strerror}); create it with mode 0600"]
        ) from e
    problems = []
    if check_mode and stat.S_IMODE(st.st_mode) & 0o077:
        problems.append(
            f"env_file {path}: mode is {stat.S_IMODE(st.st_mode):04o}; it holds secrets, "
            f"run `chmod 600 {path}`"
        )
    values: dict[str, str] = {}
    try:
        values = parse_env(text, str(path)).values
    except DeployConfigError as e:
        problems += e.problems
    for key in required:
        if not values.get(key):
            problems.append(f"{key} is missing from {path}")
    if problems:
        raise DeployConfigError(problems)
    return EnvFile(path, values)
