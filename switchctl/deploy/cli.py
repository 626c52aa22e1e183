"""Imported by `switchctl.cli.main()`: adds deploy, doctor, releases, setup and proxy to `switchctl`."""

from __future__ import annotations

from switchctl.cli import cli
from switchctl.deploy.commands import register
from switchctl.deploy.proxycli import proxy_group
from switchctl.setup.cli import setup_cmd

register(cli)
cli.add_command(setup_cmd)
cli.add_command(proxy_group)
