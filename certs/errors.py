"""The certs package's exceptions: one root, split by what went wrong.

Each error carries the exit code the CLI answers with, so `certs.cli` maps
errors to exit codes in one place:

- 1: a certificate, key or config is wrong (the message says which and how to fix it)
- 3: the files are installed but edgeproxy could not be asked to reload them
  (no socket, or this user is not allowed on it)
- 4: the files are installed but edgeproxy refused to load them
"""

from __future__ import annotations


class CertsError(Exception):
    """Root of every error the certs package raises on purpose."""

    exit_code = 1


class CertificateFileError(CertsError):
    """A certificate or key file cannot be read or parsed; the message names the file."""


class PairError(CertsError):
    """A certificate/key pair failed validation; `problems` lists each reason."""

    def __init__(self, what: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{what}: " + "; ".join(problems))


class InstallError(CertsError):
    """The files could not be written into the certificate directory."""


class AcmeError(CertsError):
    """certbot is missing or failed; the message says what to look at."""


class ReloadUnreachable(CertsError):
    """edgeproxy's control socket did not answer (it may be stopped)."""

    exit_code = 3


class ReloadRefused(CertsError):
    """edgeproxy answered the reload with an error; `status` is its HTTP status."""

    exit_code = 4

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"edgeproxy refused to reload certificates ({status}): {message}")
