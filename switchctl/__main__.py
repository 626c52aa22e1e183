"""`python -m switchctl`."""

from switchctl.cli import main

main()
