"""Imported by `switchctl.cli.main()`: adds deploy, doctor and releases to `switchctl`."""

from __future__ import annotations

from switchctl.cli import cli
from switchctl.deploy.commands import register

register(cli)
