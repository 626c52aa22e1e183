"""Does the configured set of certificates serve every site, for N more days?

Host coverage follows RFC 6125 section 6.4.3 as browsers apply it: a wildcard is
only the whole left-most label (`*.example.test`), it matches exactly one label
(`a.example.test`, not `example.test` nor `a.b.example.test`), and it needs at
least two labels after it (`*.test` covers nothing). A site host that is itself
a wildcard (`*.example.test`) is covered only by that same wildcard SAN.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from certs.errors import CertificateFileError
from certs.inspect import (
    chain_problems,
    days_left,
    key_matches,
    read_certificates,
    read_private_key,
    sans_of,
)
from edgeproxy.config import Config

DEFAULT_MIN_DAYS = 14


def _normalize(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def san_covers(san: str, host: str) -> bool:
    """Whether one SAN entry (DNS name, wildcard or IP) covers `host`."""
    san, host = _normalize(san), _normalize(host)
    host_ip, san_ip = _ip(host), _ip(san)
    if host_ip is not None or san_ip is not None:
        return host_ip is not None and host_ip == san_ip
    if san == host:
        return True
    if host.startswith("*."):
        return False  # a wildcard site needs the same wildcard SAN (equality, above)
    first, _, rest = san.partition(".")
    if first != "*" or rest.count(".") < 1:
        return False
    host_first, _, host_rest = host.partition(".")
    return bool(host_first) and host_rest == rest


def covering_san(host: str, sans: list[str]) -> str | None:
    return next((san for san in sans if san_covers(san, host)), None)


@dataclass(frozen=True)
class LoadedPair:
    """One configured certificate, parsed; `chain` is empty when it could not be read."""

    label: str
    cert_path: Path
    chain: list[x509.Certificate]

    @property
    def sans(self) -> list[str]:
        return sans_of(self.chain[0]) if self.chain else []


def pair_problems(
    chain: list[x509.Certificate],
    key: PrivateKeyTypes | None,
    now: dt.datetime,
    min_days: int,
) -> list[str]:
    """Key mismatch, chain order, not yet valid, expired or expiring within min_days."""
    leaf = chain[0]
    problems = []
    if key is not None and not key_matches(leaf, key):
        problems.append(
            "the private key does not match the certificate; install the key that was "
            "generated with this certificate"
        )
    problems.extend(chain_problems(chain))
    left = days_left(leaf, now)
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if start > now:
        problems.append(f"the certificate is not valid before {start:%F %T} UTC")
    if end <= now:
        problems.append(f"the certificate expired on {end:%F %T} UTC; renew it")
    elif left < min_days:
        problems.append(
            f"the certificate expires in {left} days ({end:%F} UTC), "
            f"within the {min_days}-day threshold; renew it (`certs renew`)"
        )
    return problems


def check_config(
    config: Config, min_days: int = DEFAULT_MIN_DAYS, now: dt.datetime | None = None
) -> list[str]:
    """Every problem with the configured certificates, one precise message each."""
    now = now or dt.datetime.now(dt.UTC)
    problems: list[str] = []
    pairs: list[LoadedPair] = []
    for i, entry in enumerate(config.tls.certificates):
        label = f"tls.certificates[{i}] ({entry.cert})"
        chain: list[x509.Certificate] = []
        try:
            chain = read_certificates(entry.cert)
            key = read_private_key(entry.key)
        except CertificateFileError as e:
            problems.append(f"{label}: {e}")
        else:
            problems.extend(f"{label}: {p}" for p in pair_problems(chain, key, now, min_days))
        pairs.append(LoadedPair(label=label, cert_path=entry.cert, chain=chain))
    webroot = config.acme.webroot
    if webroot is not None and not webroot.is_dir():
        problems.append(
            f"acme.webroot {webroot}: not a directory; create it (certbot --webroot writes "
            "challenge tokens there and edgeproxy serves them)"
        )
    if config.listen.https is None:
        return problems
    known = "; ".join(f"{p.cert_path} [{', '.join(p.sans) or 'unreadable'}]" for p in pairs)
    for i, site in enumerate(config.sites):
        for host in site.hosts:
            if not any(covering_san(host, p.sans) for p in pairs):
                problems.append(
                    f"sites[{i}] host {host}: no certificate covers it "
                    f"(certificates: {known or 'none configured'})"
                )
    return problems
