"""certs.selfsigned: a local CA and a leaf that real TLS clients and sslyze accept."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.errors import CertsError
from certs.inspect import chain_problems, key_matches, read_certificates, read_private_key
from certs.selfsigned import make_ca_and_leaf

ROOT = Path(__file__).resolve().parent.parent
SSLYZE = Path(sys.executable).parent / "sslyze"
# Mozilla "intermediate" (ssl-config.mozilla.org, v5.7) for the throwaway server below.
INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)


def test_leaf_has_every_host_and_loopback_ip_as_sans_and_server_auth_only(tmp_path: Path) -> None:
    made = make_ca_and_leaf(["shop.example.test", "www.example.test"], tmp_path)
    leaf, ca = read_certificates(made.fullchain)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["shop.example.test", "www.example.test"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert chain_problems([leaf, ca]) == []
    assert key_matches(leaf, read_private_key(made.privkey))


def test_leaf_lives_90_days_by_default_and_uses_ecdsa_p256(tmp_path: Path) -> None:
    made = make_ca_and_leaf(["a.example.test"], tmp_path)
    leaf = read_certificates(made.cert)[0]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=90) <= lifetime <= dt.timedelta(days=90, hours=1)
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"


def test_rsa_key_type_makes_a_2048_bit_rsa_leaf(tmp_path: Path) -> None:
    made = make_ca_and_leaf(["a.example.test"], tmp_path, key_type="rsa")
    key = read_certificates(made.cert)[0].public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 2048


def test_private_keys_are_written_mode_0600_and_certificates_0644(tmp_path: Path) -> None:
    made = make_ca_and_leaf(["a.example.test"], tmp_path)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {
        "ca.pem": 0o644,
        "ca.key": 0o600,
        "cert.pem": 0o644,
        "fullchain.pem": 0o644,
        "privkey.pem": 0o600,
    }
    assert made.privkey == tmp_path / "privkey.pem"


def test_second_run_in_the_same_directory_reuses_the_ca_and_makes_a_new_leaf(
    tmp_path: Path,
) -> None:
    first = make_ca_and_leaf(["a.example.test"], tmp_path)
    ca_before = first.ca_cert.read_bytes()
    leaf_before = read_certificates(first.cert)[0]
    second = make_ca_and_leaf(["b.example.test"], tmp_path)
    assert second.ca_cert.read_bytes() == ca_before
    leaf_after = read_certificates(second.cert)[0]
    assert leaf_after.serial_number != leaf_before.serial_number
    assert chain_problems(read_certificates(second.fullchain)) == []


def test_leaf_longer_than_366_days_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CertsError, match="1 to 366 days"):
        make_ca_and_leaf(["a.example.test"], tmp_path, days=400)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A threaded TLS server with Mozilla's intermediate settings serving the leaf."""
    made = make_ca_and_leaf(["shop.example.test"], tmp_path / "pki")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.set_ecdh_curve("prime256v1")
    ctx.load_cert_chain(made.fullchain, made.privkey)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1024)
                    tls.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            except (OSError, ssl.SSLError):
                pass  # scanners probe with handshakes that are meant to fail

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], made.ca_cert
    stop.set()
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
    listener.close()
    thread.join(timeout=5)


def test_python_client_trusting_the_ca_verifies_the_leaf_by_name(
    tls_server: tuple[int, Path],
) -> None:
    port, ca = tls_server
    client = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        client.wrap_socket(raw, server_hostname="shop.example.test") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: shop.example.test\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 204")
    other = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        other.wrap_socket(raw, server_hostname="other.example.test")


@pytest.mark.slow
@pytest.mark.skipif(not SSLYZE.exists(), reason="sslyze is not installed in the venv")
def test_leaf_passes_sslyze_mozilla_intermediate_with_the_ca_as_trust_store(
    tls_server: tuple[int, Path],
) -> None:
    port, ca = tls_server
    result = subprocess.run(
        [
            str(SSLYZE),
            "--mozilla_config=intermediate",
            "--certinfo_ca_file",
            str(ca),
            "--sni",
            "shop.example.test",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Compliant" in result.stdout
