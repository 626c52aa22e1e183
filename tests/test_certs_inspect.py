"""certs.inspect and `certs inspect`: facts about real PEM files, chain order, key match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from certs.cli import cli
from certs.errors import CertificateFileError
from certs.inspect import inspect_file, read_certificates, read_private_key
from certs.selfsigned import SelfSigned, make_ca_and_leaf, pem_certs, write_file


@pytest.fixture
def pair(tmp_path: Path) -> SelfSigned:
    return make_ca_and_leaf(["shop.example.test", "*.img.example.test"], tmp_path / "a")


def test_report_lists_subject_sans_issuer_dates_key_and_serial(pair: SelfSigned) -> None:
    report = inspect_file(pair.fullchain, pair.privkey)
    leaf, ca = report.certificates
    assert leaf.subject == "CN=shop.example.test,O=edgeproxy staging"
    assert leaf.sans == ["shop.example.test", "*.img.example.test", "127.0.0.1"]
    assert leaf.issuer == ca.subject
    assert 88 <= leaf.days_left <= 90
    assert (leaf.key_type, leaf.key_size) == ("ECDSA P-256", 256)
    assert leaf.serial == format(read_certificates(pair.cert)[0].serial_number, "x")
    assert (leaf.is_ca, ca.is_ca) == (False, True)
    assert (report.chain_ok, report.key_matches, report.problems) == (True, True, [])


def test_chain_with_the_ca_before_the_leaf_is_reported_out_of_order(
    pair: SelfSigned, tmp_path: Path
) -> None:
    leaf, ca = read_certificates(pair.fullchain)
    reversed_chain = tmp_path / "reversed.pem"
    write_file(reversed_chain, pem_certs(ca, leaf))
    report = inspect_file(reversed_chain)
    assert not report.chain_ok
    assert "certificate 1 (CN=edgeproxy staging CA" in report.chain_problems[0]
    assert report.chain_problems[-1] == "the chain is in reverse order: the leaf must come first"


def test_chain_with_a_foreign_intermediate_is_reported(pair: SelfSigned, tmp_path: Path) -> None:
    other = make_ca_and_leaf(["other.example.test"], tmp_path / "b")
    leaf = read_certificates(pair.cert)[0]
    foreign_ca = read_certificates(other.ca_cert)[0]
    mixed = tmp_path / "mixed.pem"
    write_file(mixed, pem_certs(leaf, foreign_ca))
    report = inspect_file(mixed)
    assert report.chain_problems == [
        f"certificate 1 ({leaf.subject.rfc4514_string()}) is not issued by the next one, "
        f"certificate 2 ({foreign_ca.subject.rfc4514_string()}): the chain is out of order or "
        "has a foreign certificate; put the leaf first, then its issuer, then that issuer's issuer"
    ]


def test_key_of_another_certificate_is_reported_as_not_matching(
    pair: SelfSigned, tmp_path: Path
) -> None:
    other = make_ca_and_leaf(["shop.example.test"], tmp_path / "b")
    report = inspect_file(pair.fullchain, other.privkey)
    assert report.key_matches is False
    assert report.problems == [
        f"{other.privkey} does not match the first certificate in {pair.fullchain} "
        "(CN=shop.example.test,O=edgeproxy staging); use the key made with this certificate"
    ]


def test_files_without_pem_content_raise_errors_naming_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(CertificateFileError, match=r"junk\.pem: no PEM certificate"):
        read_certificates(junk)
    with pytest.raises(CertificateFileError, match=r"junk\.pem: not a valid PEM private key"):
        read_private_key(junk)
    with pytest.raises(CertificateFileError, match=r"missing\.pem: cannot read"):
        read_certificates(tmp_path / "missing.pem")


def test_cli_prints_each_certificate_and_the_key_verdict(pair: SelfSigned) -> None:
    result = CliRunner().invoke(cli, ["inspect", str(pair.fullchain), "--key", str(pair.privkey)])
    assert result.exit_code == 0, result.output
    assert "SANs:       shop.example.test, *.img.example.test, 127.0.0.1" in result.output
    assert "chain order:  ok (each certificate is issued by the next)" in result.output
    assert f"key:          {pair.privkey} (ECDSA P-256 256) matches" in result.output


def test_cli_json_output_is_machine_readable(pair: SelfSigned) -> None:
    result = CliRunner().invoke(cli, ["inspect", "--json", str(pair.fullchain), str(pair.cert)])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.output)
    assert [len(r["certificates"]) for r in reports] == [2, 1]
    assert reports[0]["certificates"][0]["sans"][0] == "shop.example.test"
    assert reports[0]["chain_ok"] is True
    assert reports[0]["certificates"][0]["not_after"].endswith("+00:00")


def test_cli_exits_1_when_the_key_does_not_match(pair: SelfSigned, tmp_path: Path) -> None:
    other = make_ca_and_leaf(["x.example.test"], tmp_path / "b")
    result = CliRunner().invoke(cli, ["inspect", str(pair.fullchain), "--key", str(other.privkey)])
    assert result.exit_code == 1
    assert "DOES NOT MATCH" in result.output


def test_cli_reports_an_unparsable_file_with_exit_1(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    result = CliRunner().invoke(cli, ["inspect", str(junk)])
    assert result.exit_code == 1
    assert "junk.pem: not a valid PEM certificate file" in result.output
