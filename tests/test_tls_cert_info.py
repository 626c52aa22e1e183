"""The serving process reads its certificates without cryptography, and reads them the same."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeproxy.config import Certificate
from edgeproxy.errors import TLSConfigError
from edgeproxy.tls.contexts import _read_cert_info_cryptography, load_certificate, read_cert_info
from tests.test_switching_e2e import free_port, start_proxy


def write_cert(
    path: Path,
    subject: list[x509.NameAttribute],
    *,
    dns: list[str] | None = None,
    ips: list[str] | None = None,
    serial: int = 0x1234ABCD,
) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(subject)
    now = dt.datetime(2026, 11, 1, 12, 30, 45, tzinfo=dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=90, seconds=7))
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns or []]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips or []]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


CASES = {
    "sans": (
        [x509.NameAttribute(NameOID.COMMON_NAME, "shop.example.test")],
        ["Shop.Example.Test", "*.example.test"],
        ["127.0.0.1"],
    ),
    "cn only": ([x509.NameAttribute(NameOID.COMMON_NAME, "legacy.example.test")], None, None),
    "full subject with characters to escape": (
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Berlin"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Berlin"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'Shop, "Best" <GmbH>; +1'),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "#ops "),
            x509.NameAttribute(NameOID.COMMON_NAME, "api.example.test"),
        ],
        ["api.example.test"],
        None,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_certificate_details_match_what_cryptography_reads(tmp_path: Path, case: str) -> None:
    subject, dns, ips = CASES[case]
    pem = write_cert(tmp_path / "cert.pem", subject, dns=dns, ips=ips, serial=0xABCDEF0123456789)
    assert read_cert_info(pem) == _read_cert_info_cryptography(pem)


def test_the_leaf_is_read_from_a_full_chain(tmp_path: Path) -> None:
    leaf = write_cert(tmp_path / "leaf.pem", CASES["sans"][0], dns=["leaf.example.test"])
    ca = write_cert(tmp_path / "ca.pem", CASES["cn only"][0], serial=7)
    chain = tmp_path / "fullchain.pem"
    chain.write_bytes(leaf.read_bytes() + ca.read_bytes())
    info = read_cert_info(chain)
    assert info.names == ("leaf.example.test",)
    assert info.serial == 0x1234ABCD
    assert info.not_after == dt.datetime(2027, 1, 30, 12, 30, 52, tzinfo=dt.UTC)


def test_a_file_without_a_certificate_is_a_value_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="Error decoding PEM"):
        read_cert_info(bad)


def test_a_serving_proxy_with_tls_never_maps_cryptography(tmp_path: Path) -> None:
    cert = write_cert(tmp_path / "cert.pem", CASES["sans"][0], dns=["shop.example.test"])
    key = tmp_path / "key.pem"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # The key must belong to the cert: re-issue the cert for this key.
    _sign_for(cert, key)
    port = free_port()
    config = tmp_path / "edgeproxy.yml"
    config.write_text(
        json.dumps(
            {
                "listen": {"https": f"127.0.0.1:{port}"},
                "control": {"socket": str(tmp_path / "ctl.sock")},
                "state_file": str(tmp_path / "state.json"),
                "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]},
                "sites": [
                    {
                        "hosts": ["shop.example.test"],
                        "routes": [{"path": "/", "upstream": "http://127.0.0.1:9"}],
                    }
                ],
            }
        )
    )
    proc = start_proxy(config, port)
    try:
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "/cryptography/" not in maps
        assert "_ssl" in maps  # the check reads the right process
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def _sign_for(cert: Path, key: Path) -> None:
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    old = x509.load_pem_x509_certificate(cert.read_bytes())
    new = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.issuer)
        .public_key(private.public_key())
        .serial_number(old.serial_number)
        .not_valid_before(old.not_valid_before_utc)
        .not_valid_after(old.not_valid_after_utc)
        .add_extension(
            old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(new.public_bytes(serialization.Encoding.PEM))


def test_an_unreadable_certificate_path_is_reported_as_unreadable(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.mkdir()  # exists, but can't be read as a file
    key = tmp_path / "key.pem"
    key.write_text("")
    with pytest.raises(TLSConfigError, match=r"cert\.pem: cannot read: Is a directory"):
        load_certificate(Certificate(cert=str(cert), key=str(key)))
