"""Certificate tooling for edgeproxy (docs/certificates.md).

- `certs.inspect`: read PEM files; describe certificates; chain order; key match
- `certs.check`: RFC 6125 host coverage and expiry checks over an edgeproxy config
- `certs.selfsigned`: a local CA + leaf for staging, tests and the demo
- `certs.acme`: certbot webroot issuance and renewal command lines
- `certs.install`: validate a pair, install it atomically (versions + symlink swap), rollback
- `certs.control`: a tiny client for edgeproxy's control socket (certificate reload)
- `certs.cli`: the `certs` command
"""
