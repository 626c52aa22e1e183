"""`python -m switchctl.deploy`: the deploy commands on their own (same as in `switchctl`)."""

from __future__ import annotations

import click

from switchctl.deploy.commands import register


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """switchctl's deploy commands: deploy, doctor, releases."""


register(main)

if __name__ == "__main__":
    main()
