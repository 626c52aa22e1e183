"""SSLContexts per certificate, chosen by SNI, swapped atomically on reload.

The listener is created once with a *dispatch* context whose SNI callback
points each new handshake at the current context for the requested name.
Reloading builds every new context first and then replaces one dict, so a
failed reload changes nothing and open connections keep their session.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edgeproxy.config import Certificate
from edgeproxy.errors import TLSConfigError

log = logging.getLogger("edgeproxy.tls")

# Mozilla "intermediate" (v5.7): TLS 1.2 + 1.3, these ciphers, these curves.
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)
INTERMEDIATE_CURVES = "X25519:prime256v1:secp384r1"


@dataclass(frozen=True, slots=True)
class LoadedCert:
    """One certificate as served: its context, names and validity."""

    cert_path: Path
    key_path: Path
    context: ssl.SSLContext
    names: tuple[str, ...]
    subject: str
    not_after: dt.datetime
    serial: int
    fingerprint: tuple[int, int, int, int]
    """(dev, inode, mtime_ns, size) of cert and key files, to notice changes."""
    context_h1: ssl.SSLContext | None = None
    """The same certificate offering HTTP/1.1 only, for sites with `http2: false`
    (None when `context` offers HTTP/1.1 only itself)."""

    def days_left(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.UTC)
        return (self.not_after - now).total_seconds() / 86400

    def view(self) -> dict[str, object]:
        return {
            "cert": str(self.cert_path),
            "subject": self.subject,
            "sans": list(self.names),
            "serial": format(self.serial, "x"),
            "not_after": self.not_after.isoformat(),
            "days_left": round(self.days_left(), 2),
        }


def _file_fingerprint(cert: Path, key: Path) -> tuple[int, int, int, int]:
    a, b = cert.stat(), key.stat()
    return (a.st_ino ^ (b.st_ino << 1), a.st_mtime_ns ^ b.st_mtime_ns, a.st_size, b.st_size)


ALPN_H2: Final = ("h2", "http/1.1")
"""What the TLS listener offers with HTTP/2 on (`listen.http2`), in our order of preference."""
ALPN_H1: Final = ("http/1.1",)


def new_server_context(
    *, session_tickets: bool = True, alpn: tuple[str, ...] = ALPN_H1
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.set_ecdh_curve("prime256v1")
    _set_groups(ctx)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE  # intermediate: client chooses
    if not session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def _set_groups(ctx: ssl.SSLContext) -> None:
    """Restrict key exchange groups to X25519/P-256/P-384 (Python has no API for it)."""
    import ctypes

    try:
        lib = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]
        fn = lib.SSL_CTX_ctrl
    except (OSError, AttributeError):
        return
    # SSL_CTX_set1_groups_list is a macro over SSL_CTX_ctrl(ctx, 92, 0, list).
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    fn.restype = ctypes.c_long
    ptr = _ssl_ctx_pointer(ctx)
    if ptr:
        fn(ptr, 92, 0, INTERMEDIATE_CURVES.encode())


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int:
    """The SSL_CTX* inside a Python SSLContext (CPython's PySSLContext layout)."""
    import ctypes

    # PySSLContext: PyObject_HEAD (refcnt, type) then SSL_CTX *ctx.
    return ctypes.c_void_p.from_address(id(ctx) + 2 * ctypes.sizeof(ctypes.c_void_p)).value or 0


# getpeercert()'s attribute names → RFC 4514 short names (as cryptography prints them).
_RDN_SHORT = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _rfc4514(value: str) -> str:
    """Escape an attribute value the way cryptography's rfc4514_string() does."""
    out = "".join("\\" + c if c in ',+"\\<>;' else c for c in value).replace("\0", "\\00")
    if out[:1] in ("#", " "):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out


@dataclass(frozen=True, slots=True)
class CertInfo:
    names: tuple[str, ...]
    subject: str
    not_after: dt.datetime
    serial: int


def read_cert_info(cert_path: Path) -> CertInfo:
    """Names, subject, expiry and serial of the first certificate in a PEM file.

    Decoded by the ssl module (the decoder behind `getpeercert()`), not by
    `cryptography`: the serving process then never loads cryptography's
    extension, 7.4 MiB of RSS measured (`certs/` still uses it). Raises
    ValueError for a file that holds no PEM certificate.
    """
    decode = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    if decode is None:  # not in this Python: fall back to cryptography
        return _read_cert_info_cryptography(cert_path)
    try:
        info = decode(str(cert_path))
    except ssl.SSLError as e:
        cert_path.open("rb").close()  # an unreadable file: OSError, "cannot read", as before
        raise ValueError(str(e.args[0] if e.args else e)) from e
    rdns = info.get("subject", ())
    dns = tuple(v.lower() for k, v in info.get("subjectAltName", ()) if k == "DNS")
    if not dns:
        dns = tuple(v.lower() for rdn in rdns for k, v in rdn if k == "commonName")
    subject = ",".join(
        "+".join(f"{_RDN_SHORT.get(k, k)}={_rfc4514(v)}" for k, v in rdn) for rdn in reversed(rdns)
    )
    not_after = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(info["notAfter"]), dt.UTC)
    return CertInfo(dns, subject, not_after, int(info["serialNumber"], 16))


def _read_cert_info_cryptography(cert_path: Path) -> CertInfo:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = tuple(n.lower() for n in sans.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = tuple(str(c.value).lower() for c in cns)
    return CertInfo(
        names, leaf.subject.rfc4514_string(), leaf.not_valid_after_utc, leaf.serial_number
    )


def load_certificate(
    spec: Certificate, *, session_tickets: bool = True, http2: bool = False
) -> LoadedCert:
    """Build the SSLContext for one cert/key pair; raise TLSConfigError naming the file."""
    cert_path, key_path = Path(spec.cert), Path(spec.key)
    try:
        fingerprint = _file_fingerprint(cert_path, key_path)
        info = read_cert_info(cert_path)
    except OSError as e:
        raise TLSConfigError(f"{e.filename}: cannot read: {e.strerror}") from e
    except ValueError as e:
        raise TLSConfigError(f"{cert_path}: not a PEM certificate: {e}") from e
    ctx = new_server_context(session_tickets=session_tickets, alpn=ALPN_H2 if http2 else ALPN_H1)
    _load_chain(ctx, cert_path, key_path)
    ctx_h1 = None
    if http2:
        ctx_h1 = new_server_context(session_tickets=session_tickets)
        _load_chain(ctx_h1, cert_path, key_path)
    return LoadedCert(
        cert_path=cert_path,
        key_path=key_path,
        context=ctx,
        names=info.names,
        subject=info.subject,
        not_after=info.not_after,
        serial=info.serial,
        fingerprint=fingerprint,
        context_h1=ctx_h1,
    )


def _load_chain(ctx: ssl.SSLContext, cert_path: Path, key_path: Path) -> None:
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as e:
        why = "the key does not match the certificate" if "mismatch" in str(e).lower() else str(e)
        raise TLSConfigError(f"{cert_path} + {key_path}: {why}") from e
    except OSError as e:
        raise TLSConfigError(f"{key_path}: cannot load: {e.strerror or e}") from e


class CertStore:
    """The certificates in service and the SNI dispatch over them."""

    def __init__(
        self, specs: Sequence[Certificate], *, session_tickets: bool = True, http2: bool = False
    ) -> None:
        self.specs = list(specs)
        self.session_tickets = session_tickets
        self.http2 = http2
        """Offer `h2` by ALPN (`listen.http2`); fixed for the life of the listener."""
        self.h1_hosts: frozenset[str] = frozenset()
        """Host names (and `*.domain` wildcards) of sites with `http2: false`."""
        self.certs: list[LoadedCert] = []
        self._by_name: dict[str, ssl.SSLContext] = {}
        self._h1_of: dict[int, ssl.SSLContext] = {}
        """id(context) -> the same certificate's HTTP/1.1-only context."""
        self._default: ssl.SSLContext | None = None
        self.dispatch = new_server_context(
            session_tickets=session_tickets, alpn=ALPN_H2 if http2 else ALPN_H1
        )
        self.dispatch.sni_callback = self._on_sni
        self.last_error: str | None = None

    def build(self, specs: Sequence[Certificate] | None = None) -> list[LoadedCert]:
        """Build the contexts of `specs` (default: the current ones); change nothing.

        Raises TLSConfigError naming the file at fault.
        """
        return [
            load_certificate(s, session_tickets=self.session_tickets, http2=self.http2)
            for s in (self.specs if specs is None else specs)
        ]

    def install(
        self, loaded: list[LoadedCert], specs: Sequence[Certificate] | None = None
    ) -> list[LoadedCert]:
        """Swap in contexts from build() at once (and the specs they came from)."""
        by_name: dict[str, ssl.SSLContext] = {}
        for c in loaded:
            for n in c.names:
                by_name.setdefault(n, c.context)
        if loaded:
            # The dispatch context must hold a certificate itself for clients
            # whose handshake never reaches the SNI callback's switch.
            first = loaded[0]
            self.dispatch.load_cert_chain(first.cert_path, first.key_path)
        # One assignment each: new handshakes see the new set, old ones keep theirs.
        if specs is not None:
            self.specs = list(specs)
        self._by_name = by_name
        self._h1_of = {id(c.context): c.context_h1 for c in loaded if c.context_h1 is not None}
        self._default = loaded[0].context if loaded else None
        self.certs = loaded
        self.last_error = None
        return loaded

    def load(self) -> list[LoadedCert]:
        """Build every context, then swap them in at once; raise without changing anything."""
        return self.install(self.build())

    def reload(self) -> list[LoadedCert]:
        try:
            loaded = self.load()
        except TLSConfigError as e:
            self.last_error = str(e)
            log.error("certificate reload failed, still serving the previous certificates: %s", e)
            raise
        self.log_serving()
        return loaded

    def log_serving(self) -> None:
        for c in self.certs:
            log.info(
                "serving certificate %s (serial %x, %.0f days left)",
                c.cert_path,
                c.serial,
                c.days_left(),
            )

    def changed_on_disk(self) -> bool:
        for c in self.certs:
            try:
                if _file_fingerprint(c.cert_path, c.key_path) != c.fingerprint:
                    return True
            except OSError:
                continue  # mid-rename or removed: keep the one in service
        return False

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        if server_name:
            name = server_name.lower()
            ctx = self._by_name.get(name)
            if ctx is not None:
                return ctx
            _, dot, parent = name.partition(".")
            if dot:
                ctx = self._by_name.get("*." + parent)
                if ctx is not None:
                    return ctx
        return self._default

    def _on_sni(self, sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        ctx = self.context_for(server_name)
        if ctx is not None:
            if self.h1_hosts and self._h1_only(server_name):
                # A site with `http2: false`: the same certificate, ALPN http/1.1 only
                # (OpenSSL asks the context in force after this callback to choose).
                ctx = self._h1_of.get(id(ctx), ctx)
            sslobj.context = ctx
        # Remembered for the 421 check (SNI name vs Host header).
        sslobj.edgeproxy_sni = server_name  # type: ignore[attr-defined]

    def _h1_only(self, server_name: str | None) -> bool:
        if not server_name:
            return False
        name = server_name.lower()
        if name in self.h1_hosts:
            return True
        _, dot, parent = name.partition(".")
        return bool(dot) and "*." + parent in self.h1_hosts

    def views(self) -> list[dict[str, object]]:
        return [c.view() for c in self.certs]
