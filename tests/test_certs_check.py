"""certs.check and `certs check`: host coverage (RFC 6125 wildcards), key match, expiry."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from certs.check import check_config, san_covers
from certs.cli import cli
from certs.inspect import read_certificates
from certs.selfsigned import SelfSigned, make_ca_and_leaf, pem_certs, write_file
from edgeproxy.config import load_config


@pytest.mark.parametrize(
    ("san", "host", "covered"),
    [
        ("shop.example.test", "shop.example.test", True),
        ("Shop.Example.Test.", "shop.example.test", True),
        ("shop.example.test", "www.example.test", False),
        ("*.example.test", "a.example.test", True),
        ("*.example.test", "example.test", False),
        ("*.example.test", "a.b.example.test", False),
        ("*.example.test", "*.example.test", True),
        ("*.example.test", "*.b.example.test", False),
        ("a.example.test", "*.example.test", False),
        ("*.test", "example.test", False),
        ("f*.example.test", "foo.example.test", False),
        ("a.*.example.test", "a.b.example.test", False),
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("*.0.0.1", "127.0.0.1", False),
    ],
)
def test_san_coverage_follows_rfc_6125_left_most_label_wildcards(
    san: str, host: str, covered: bool
) -> None:
    assert san_covers(san, host) is covered


def _config(tmp_path: Path, certs: list[SelfSigned], hosts: list[list[str]]) -> Path:
    cert_lines = (
        "".join(f"    - {{cert: {c.fullchain}, key: {c.privkey}}}\n" for c in certs) or "    []\n"
    )
    site_lines = "".join(
        f"  - hosts: {h}\n    routes: [{{path: /, upstream: 'http://127.0.0.1:9'}}]\n"
        for h in hosts
    )
    path = tmp_path / "edgeproxy.yml"
    path.write_text(
        textwrap.dedent(
            """\
            listen: {http: "127.0.0.1:0", https: "127.0.0.1:0"}
            tls:
              certificates:
            """
        )
        + cert_lines
        + "sites:\n"
        + site_lines
    )
    return path


@pytest.fixture
def shop(tmp_path: Path) -> SelfSigned:
    return make_ca_and_leaf(["shop.example.test", "*.img.example.test"], tmp_path / "shop")


def test_config_whose_certificates_cover_every_host_has_no_problems(
    tmp_path: Path, shop: SelfSigned
) -> None:
    admin = make_ca_and_leaf(["admin.example.test"], tmp_path / "admin")
    path = _config(
        tmp_path,
        [shop, admin],
        [["shop.example.test", "cdn.img.example.test"], ["admin.example.test"]],
    )
    assert check_config(load_config(path)) == []


def test_uncovered_host_is_named_with_its_site_index_and_the_certificates_sans(
    tmp_path: Path, shop: SelfSigned
) -> None:
    path = _config(
        tmp_path, [shop], [["shop.example.test"], ["img.example.test", "a.b.img.example.test"]]
    )
    known = f"{shop.fullchain} [shop.example.test, *.img.example.test, 127.0.0.1]"
    assert check_config(load_config(path)) == [
        f"sites[1] host img.example.test: no certificate covers it (certificates: {known})",
        f"sites[1] host a.b.img.example.test: no certificate covers it (certificates: {known})",
    ]


def test_wildcard_site_host_needs_the_same_wildcard_in_a_certificate(
    tmp_path: Path, shop: SelfSigned
) -> None:
    path = _config(tmp_path, [shop], [["*.img.example.test"], ["*.example.test"]])
    problems = check_config(load_config(path))
    assert len(problems) == 1
    assert problems[0].startswith("sites[1] host *.example.test: no certificate covers it")


def test_key_of_another_certificate_is_reported_for_its_config_entry(
    tmp_path: Path, shop: SelfSigned
) -> None:
    other = make_ca_and_leaf(["shop.example.test"], tmp_path / "other")
    write_file(shop.privkey, other.privkey.read_bytes(), 0o600)
    path = _config(tmp_path, [shop], [["shop.example.test"]])
    assert check_config(load_config(path)) == [
        f"tls.certificates[0] ({shop.fullchain}): the private key does not match the "
        "certificate; install the key that was generated with this certificate"
    ]


def test_wrongly_ordered_chain_is_reported(tmp_path: Path, shop: SelfSigned) -> None:
    leaf, ca = read_certificates(shop.fullchain)
    write_file(shop.fullchain, pem_certs(ca, leaf))
    path = _config(tmp_path, [shop], [["other.example.test"]])
    problems = check_config(load_config(path))
    assert any("the chain is in reverse order" in p for p in problems)
    # the leaf is no longer first, so its SANs are not the ones checked for coverage
    assert any(p.startswith("sites[0] host other.example.test") for p in problems)


def test_expiry_threshold_counts_whole_days_left(tmp_path: Path, shop: SelfSigned) -> None:
    config = load_config(_config(tmp_path, [shop], [["shop.example.test"]]))
    not_after = read_certificates(shop.cert)[0].not_valid_after_utc
    ten_days_before = not_after - dt.timedelta(days=10, hours=1)
    assert check_config(config, min_days=10, now=ten_days_before) == []
    [problem] = check_config(config, min_days=11, now=ten_days_before)
    assert problem == (
        f"tls.certificates[0] ({shop.fullchain}): the certificate expires in 10 days "
        f"({not_after:%F} UTC), within the 11-day threshold; renew it (`certs renew`)"
    )
    [expired] = check_config(config, now=not_after + dt.timedelta(seconds=1))
    assert f"the certificate expired on {not_after:%F %T} UTC" in expired


def test_unreadable_certificate_file_is_reported_and_its_hosts_are_uncovered(
    tmp_path: Path, shop: SelfSigned
) -> None:
    shop.fullchain.unlink()
    problems = check_config(load_config(_config(tmp_path, [shop], [["shop.example.test"]])))
    assert problems[0] == (
        f"tls.certificates[0] ({shop.fullchain}): {shop.fullchain}: cannot read: "
        "No such file or directory"
    )
    assert problems[1].endswith(f"(certificates: {shop.fullchain} [unreadable])")


def test_cli_exits_1_with_one_line_per_problem_and_0_when_fine(
    tmp_path: Path, shop: SelfSigned
) -> None:
    good = _config(tmp_path, [shop], [["shop.example.test"]])
    ok = CliRunner().invoke(cli, ["check", "--config", str(good)])
    assert ok.exit_code == 0, ok.output
    assert ok.output == "ok: 1 certificate(s), 1 site host(s), none expires within 14 days\n"
    too_soon = CliRunner().invoke(cli, ["check", "--config", str(good), "--days", "100"])
    assert too_soon.exit_code == 1
    assert "within the 100-day threshold" in too_soon.output


def test_cli_reports_an_invalid_config_with_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("listen: {https: '127.0.0.1:0'}\n")
    result = CliRunner().invoke(cli, ["check", "--config", str(path)])
    assert result.exit_code == 1
    assert "is not a valid edgeproxy config" in result.output
    assert "no certificate is configured" in result.output


def test_missing_acme_webroot_is_reported(tmp_path: Path, shop: SelfSigned) -> None:
    path = _config(tmp_path, [shop], [["shop.example.test"]])
    path.write_text(path.read_text() + "acme: {webroot: no-such-dir}\n")
    assert check_config(load_config(path)) == [
        f"acme.webroot {tmp_path / 'no-such-dir'}: not a directory; create it (certbot "
        "--webroot writes challenge tokens there and edgeproxy serves them)"
    ]
