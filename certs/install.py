"""Validate a certificate/key pair and install it atomically into edgeproxy's directory.

Layout of one installed certificate (`DEST/NAME/`), like certbot's live/archive:

    versions/0002-20261126T133000Z-4f2a…/fullchain.pem   (0644)
    versions/0002-20261126T133000Z-4f2a…/privkey.pem     (0600)
    current -> versions/0002-20261126T133000Z-4f2a…
    fullchain.pem -> current/fullchain.pem           (what edgeproxy.yml names)
    privkey.pem   -> current/privkey.pem

Why a versioned directory and a symlink swap rather than renaming two files: the
new pair is written completely (temp directory, fsync, rename) before anything a
reader looks at changes, and then ONE rename of the `current` link moves the
certificate and its key together. Renaming two files one after the other leaves
a moment where a reader (edgeproxy's file watcher) finds the new key beside the
old certificate. The previous versions stay on disk, so `certs rollback` is one
more link swap. The stable `fullchain.pem`/`privkey.pem` links never change after
the first install, so edgeproxy's config does not either.

A reader that opens the two stable names one after the other can still straddle
the swap by microseconds; edgeproxy's loader then fails its key check, keeps the
pair in service and retries on its next file check, and `certs install` asks for
a reload only after the swap, so the reload it triggers always sees one version.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.check import pair_problems
from certs.errors import CertificateFileError, InstallError, PairError
from certs.inspect import parse_certificates, parse_private_key, read_file, sans_of, utcnow

CERT_FILE = "fullchain.pem"
KEY_FILE = "privkey.pem"
KEEP_VERSIONS = 5


@dataclass(frozen=True)
class ValidPair:
    """A pair that passed validation, held as the bytes that will be written."""

    chain_pem: bytes
    key_pem: bytes
    leaf: x509.Certificate

    @property
    def serial(self) -> str:
        return format(self.leaf.serial_number, "x")

    @property
    def sans(self) -> list[str]:
        return sans_of(self.leaf)


@dataclass(frozen=True)
class Installed:
    directory: Path
    version: str
    previous: str | None
    cert: Path
    key: Path


def validate_pair(cert_path: Path, key_path: Path, now: dt.datetime | None = None) -> ValidPair:
    """Parse both files, check key match, chain order and dates; raise PairError if not fit."""
    what = f"refusing {cert_path} + {key_path}"
    try:
        cert_data, key_data = read_file(cert_path), read_file(key_path)
        chain = parse_certificates(cert_data, str(cert_path))
        key = parse_private_key(key_data, str(key_path))
    except CertificateFileError as e:
        raise PairError(what, [str(e)]) from e
    problems = pair_problems(chain, key, now or utcnow(), min_days=0)
    if problems:
        raise PairError(what, problems)
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    return ValidPair(chain_pem=chain_pem, key_pem=key_data, leaf=chain[0])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow the mode
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _point(link: Path, target: str) -> None:
    """Make `link` a symlink to `target` with one atomic rename (replaces a file or link)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One install or rollback at a time per certificate (certbot may run hooks in parallel)."""
    fd = os.open(directory / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _new_version(versions: Path, label: str, chain_pem: bytes, key_pem: bytes) -> str:
    """Write a complete version directory under a temp name, then rename it into place.

    The name starts with a sequence number, so versions sort in install order
    even when two land within the same second.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=versions))
    try:
        os.chmod(tmp, 0o755)
        _write_file(tmp / KEY_FILE, key_pem, 0o600)
        _write_file(tmp / CERT_FILE, chain_pem, 0o644)
        _fsync_dir(tmp)
        existing = list_versions(versions.parent)
        seq = int(existing[-1].split("-", 1)[0]) + 1 if existing else 1
        final = f"{seq:04d}-{label}"
        os.rename(tmp, versions / final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(versions)
    return final


def current_version(directory: Path) -> str | None:
    link = directory / "current"
    return Path(os.readlink(link)).name if link.is_symlink() else None


def list_versions(directory: Path) -> list[str]:
    """Installed versions, oldest first (names start with a sequence number)."""
    versions = directory / "versions"
    if not versions.is_dir():
        return []
    names = [p.name for p in versions.iterdir() if p.is_dir() and p.name[:4].isdigit()]
    return sorted(names, key=lambda n: int(n.split("-", 1)[0]))


def _adopt_plain_files(directory: Path, versions: Path) -> None:
    """First install over plain files (e.g. from `certs selfsigned`): keep them as a version.

    `current` points at a copy of them before the plain files become links, so
    the pair seen through the stable names never changes during the migration.
    """
    cert, key = directory / CERT_FILE, directory / KEY_FILE
    if cert.is_symlink() or not cert.is_file() or not key.is_file() or key.is_symlink():
        return
    mtime = dt.datetime.fromtimestamp(cert.stat().st_mtime, dt.UTC)
    version = _new_version(
        versions, f"{mtime:%Y%m%dT%H%M%SZ}-adopted", cert.read_bytes(), key.read_bytes()
    )
    _switch(directory, version)


def _switch(directory: Path, version: str) -> None:
    _point(directory / "current", f"versions/{version}")
    for name in (KEY_FILE, CERT_FILE):
        link = directory / name
        if not link.is_symlink() or os.readlink(link) != f"current/{name}":
            _point(link, f"current/{name}")
    _fsync_dir(directory)


def _prune(directory: Path, keep: int) -> None:
    names = list_versions(directory)
    current = current_version(directory)
    for name in names[: max(0, len(names) - keep)]:
        if name != current:
            shutil.rmtree(directory / "versions" / name, ignore_errors=True)


def install_pair(
    pair: ValidPair,
    dest: Path,
    name: str,
    keep: int = KEEP_VERSIONS,
    now: dt.datetime | None = None,
) -> Installed:
    """Write `pair` as a new version of DEST/NAME and switch `current` to it."""
    directory = dest / name
    versions = directory / "versions"
    try:
        versions.mkdir(parents=True, exist_ok=True)
        with _locked(directory):
            _adopt_plain_files(directory, versions)
            previous = current_version(directory)
            stamp = f"{(now or utcnow()):%Y%m%dT%H%M%SZ}-{pair.serial[:16]}"
            version = _new_version(versions, stamp, pair.chain_pem, pair.key_pem)
            _switch(directory, version)
            _prune(directory, max(keep, 2))
    except OSError as e:
        raise InstallError(
            f"cannot install into {directory}: {e.strerror or e} "
            "(run as the user that owns edgeproxy's certificate directory, or pick --dest)"
        ) from e
    return Installed(
        directory=directory,
        version=version,
        previous=previous,
        cert=directory / CERT_FILE,
        key=directory / KEY_FILE,
    )


def rollback(dest: Path, name: str, now: dt.datetime | None = None) -> Installed:
    """Point DEST/NAME back at the version installed before the current one (validated)."""
    directory = dest / name
    if not directory.is_dir():
        raise InstallError(f"{directory}: nothing is installed there (check --dest and --name)")
    with _locked(directory):
        names = list_versions(directory)
        current = current_version(directory)
        if current not in names or names.index(current) == 0:
            raise InstallError(
                f"{directory}: no version older than {current or 'the current one'} to roll "
                f"back to (installed: {', '.join(names) or 'none'})"
            )
        target = names[names.index(current) - 1]
        vdir = directory / "versions" / target
        validate_pair(vdir / CERT_FILE, vdir / KEY_FILE, now)
        _switch(directory, target)
    return Installed(
        directory=directory,
        version=target,
        previous=current,
        cert=directory / CERT_FILE,
        key=directory / KEY_FILE,
    )
