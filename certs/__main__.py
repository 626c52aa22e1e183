"""`python -m certs …` is the same as the `certs` console script."""

from certs.cli import main

main()
