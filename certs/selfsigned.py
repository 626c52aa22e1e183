"""A local CA and a leaf certificate for staging, tests and the demo.

`make_ca_and_leaf(["shop.example.test"], out_dir)` writes:

- `ca.pem`, `ca.key`: the CA (reused when the directory already holds a valid one,
  so clients that trust it keep trusting the next leaf);
- `fullchain.pem`: the leaf, then the CA; `privkey.pem` (mode 0600): the leaf's key;
- `cert.pem`: the leaf alone.

The leaf fits Mozilla's "intermediate" profile (sslyze checks it): ECDSA P-256 or
RSA 2048, SHA-256, at most 90 days by default (the profile allows 366), SANs for
every host plus 127.0.0.1, serverAuth only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.errors import CertsError
from certs.inspect import read_certificates, read_private_key, utcnow

KeyType = Literal["ecdsa", "rsa"]
CA_DAYS = 1825
MAX_LEAF_DAYS = 366
_BACKDATE = dt.timedelta(hours=1)
"""notBefore is an hour back so a client whose clock is a little behind accepts the leaf."""


@dataclass(frozen=True)
class SelfSigned:
    ca_cert: Path
    ca_key: Path
    fullchain: Path
    privkey: Path
    cert: Path


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def new_key(key_type: KeyType = "ecdsa") -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeproxy staging"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    """A KeyUsage extension with only the named usages set."""
    usages = [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    ]
    return x509.KeyUsage(**{u: allowed.get(u, False) for u in usages})


def make_ca(
    days: int = CA_DAYS, key_type: KeyType = "ecdsa"
) -> tuple[x509.Certificate, PrivateKey]:
    key = new_key(key_type)
    now = utcnow()
    name = _name(f"edgeproxy staging CA {now:%Y-%m-%d %H:%M:%S}")
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    hosts: list[str],
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    days: int = 90,
    key_type: KeyType = "ecdsa",
    now: dt.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A leaf signed by the CA, valid from `now` (default: the clock) minus an hour."""
    if not hosts:
        raise CertsError("selfsigned: give at least one host name (--hosts shop.example.test)")
    if not 0 < days <= MAX_LEAF_DAYS:
        raise CertsError(
            f"selfsigned: --days {days} is out of range; a leaf may live 1 to {MAX_LEAF_DAYS} days "
            "(browsers and Mozilla's profile refuse longer ones)"
        )
    key = new_key(key_type)
    now = now or utcnow()
    names: list[x509.GeneralName] = []
    for host in [*hosts, "127.0.0.1"]:
        general = _general_name(host.strip().lower().rstrip("."))
        if general not in names:
            names.append(general)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_encipherment=key_type == "rsa"),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def pem_certs(*certs: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write through a temp file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _existing_ca(out_dir: Path, min_days: int) -> tuple[x509.Certificate, PrivateKey] | None:
    ca_path, key_path = out_dir / "ca.pem", out_dir / "ca.key"
    if not (ca_path.exists() and key_path.exists()):
        return None
    cert = read_certificates(ca_path)[0]
    key = read_private_key(key_path)
    if not isinstance(key, PrivateKey):
        return None
    if cert.not_valid_after_utc < utcnow() + dt.timedelta(days=min_days):
        return None
    return cert, key


def make_ca_and_leaf(
    hosts: list[str],
    out_dir: Path | str,
    days: int = 90,
    key_type: KeyType = "ecdsa",
) -> SelfSigned:
    """Write a CA (or reuse the one in out_dir) and a leaf for `hosts`; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = _existing_ca(out, days)
    if existing is None:
        ca_cert, ca_key = make_ca(key_type=key_type)
        write_file(out / "ca.key", pem_key(ca_key), 0o600)
        write_file(out / "ca.pem", pem_certs(ca_cert), 0o644)
    else:
        ca_cert, ca_key = existing
    leaf, leaf_key = make_leaf(hosts, ca_cert, ca_key, days=days, key_type=key_type)
    paths = SelfSigned(
        ca_cert=out / "ca.pem",
        ca_key=out / "ca.key",
        fullchain=out / "fullchain.pem",
        privkey=out / "privkey.pem",
        cert=out / "cert.pem",
    )
    # Key first, then the chain: a reader that sees the new chain also finds its key.
    write_file(paths.privkey, pem_key(leaf_key), 0o600)
    write_file(paths.cert, pem_certs(leaf), 0o644)
    write_file(paths.fullchain, pem_certs(leaf, ca_cert), 0o644)
    return paths
