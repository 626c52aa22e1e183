"""Read PEM certificates and keys and describe them: the facts `certs inspect` prints.

Everything here is pure apart from reading files: the checks (`chain_problems`,
`key_matches`) take parsed objects so `check` and `install` reuse them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from certs.errors import CertificateFileError

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def read_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file, in file order (a fullchain: leaf first)."""
    return parse_certificates(read_file(path), str(path))


def read_private_key(path: Path) -> PrivateKeyTypes:
    return parse_private_key(read_file(path), str(path))


def parse_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    if _PEM_CERT not in data:
        raise CertificateFileError(f"{source}: no PEM certificate in this file")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateFileError(f"{source}: not a valid PEM certificate file: {e}") from e


def parse_private_key(data: bytes, source: str) -> PrivateKeyTypes:
    """An unencrypted PEM private key (edgeproxy cannot prompt for a passphrase)."""
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        raise CertificateFileError(
            f"{source}: the private key is encrypted; edgeproxy needs an unencrypted key "
            "(openssl pkey -in KEY -out KEY.plain)"
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertificateFileError(f"{source}: not a valid PEM private key: {e}") from e


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CertificateFileError(f"{path}: cannot read: {e.strerror}") from e


def sans_of(cert: x509.Certificate) -> list[str]:
    """DNS names then IP addresses from the subjectAltName extension (empty without one)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = [name.lower() for name in ext.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return dns + ips


def key_description(key: Any) -> tuple[str, int]:
    """("ECDSA P-256" style type name, size in bits) of a public or private key."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {curve.get(key.curve.name, key.curve.name)}", key.curve.key_size
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RSA", key.key_size
    if isinstance(key, dsa.DSAPublicKey | dsa.DSAPrivateKey):
        return "DSA", key.key_size
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "Ed448", 456
    return type(key).__name__, 0


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


@dataclass(frozen=True)
class CertInfo:
    subject: str
    sans: list[str]
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    days_left: int
    key_type: str
    key_size: int
    serial: str
    is_ca: bool

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["not_before"] = self.not_before.isoformat()
        out["not_after"] = self.not_after.isoformat()
        return out


def describe(cert: x509.Certificate, now: dt.datetime | None = None) -> CertInfo:
    now = now or utcnow()
    key_type, key_size = key_description(cert.public_key())
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        sans=sans_of(cert),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        days_left=days_left(cert, now),
        key_type=key_type,
        key_size=key_size,
        serial=format(cert.serial_number, "x"),
        is_ca=_is_ca(cert),
    )


def days_left(cert: x509.Certificate, now: dt.datetime) -> int:
    """Whole days until notAfter (negative once expired)."""
    return (cert.not_valid_after_utc - now) // dt.timedelta(days=1)


def _label(i: int, cert: x509.Certificate) -> str:
    return f"certificate {i + 1} ({cert.subject.rfc4514_string() or 'empty subject'})"


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _in_order(chain: list[x509.Certificate]) -> bool:
    return all(_issued_by(chain[i], chain[i + 1]) for i in range(len(chain) - 1))


def chain_problems(chain: list[x509.Certificate]) -> list[str]:
    """Each place where certificate i is not issued by certificate i+1 (empty: in order)."""
    problems = [
        f"{_label(i, chain[i])} is not issued by the next one, "
        f"{_label(i + 1, chain[i + 1])}: the chain is out of order or has a "
        "foreign certificate; put the leaf first, then its issuer, then that "
        "issuer's issuer"
        for i in range(len(chain) - 1)
        if not _issued_by(chain[i], chain[i + 1])
    ]
    if problems and _in_order(chain[::-1]):
        problems.append("the chain is in reverse order: the leaf must come first")
    return problems


def key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    """Whether the private key belongs to the certificate's public key."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


@dataclass
class FileReport:
    """What `certs inspect PATH [--key KEY]` reports about one file."""

    path: str
    certificates: list[CertInfo]
    chain_ok: bool
    chain_problems: list[str]
    key: str | None = None
    key_matches: bool | None = None
    key_type: str | None = None
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["certificates"] = [c.to_json() for c in self.certificates]
        return out


def inspect_file(path: Path, key: Path | None = None, now: dt.datetime | None = None) -> FileReport:
    now = now or utcnow()
    chain = read_certificates(path)
    problems = chain_problems(chain)
    report = FileReport(
        path=str(path),
        certificates=[describe(c, now) for c in chain],
        chain_ok=not problems,
        chain_problems=problems,
    )
    report.problems.extend(problems)
    if chain[0].not_valid_after_utc <= now:
        report.problems.append(f"{path}: the certificate expired on {chain[0].not_valid_after_utc}")
    if key is not None:
        private = read_private_key(key)
        key_type, key_size = key_description(private)
        report.key = str(key)
        report.key_type = f"{key_type} {key_size}"
        report.key_matches = key_matches(chain[0], private)
        if not report.key_matches:
            report.problems.append(
                f"{key} does not match the first certificate in {path} "
                f"({chain[0].subject.rfc4514_string()}); use the key made with this certificate"
            )
    return report
