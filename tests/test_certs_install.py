"""certs.install and `certs install` / `certs rollback`: validate, swap atomically, reload."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import stat
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

from certs.cli import cli
from certs.errors import PairError
from certs.inspect import key_matches, read_certificates, read_private_key
from certs.install import install_pair, list_versions, rollback, validate_pair
from certs.selfsigned import (
    SelfSigned,
    make_ca_and_leaf,
    make_leaf,
    pem_certs,
    pem_key,
    write_file,
)

ROOT = Path(__file__).resolve().parent.parent


def _snapshot(directory: Path) -> dict[str, Any]:
    """Everything a reader could observe below `directory`: links, bytes and modes."""
    out: dict[str, Any] = {}
    for path in sorted(directory.rglob("*")):
        rel = str(path.relative_to(directory))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_file():
            out[rel] = ("file", path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return out


def _serial(path: Path) -> int:
    return read_certificates(path)[0].serial_number


@pytest.fixture
def first(tmp_path: Path) -> SelfSigned:
    return make_ca_and_leaf(["shop.example.test"], tmp_path / "first")


@pytest.fixture
def second(tmp_path: Path) -> SelfSigned:
    return make_ca_and_leaf(["shop.example.test"], tmp_path / "second")


def test_install_writes_a_version_and_stable_links_with_key_0600_and_cert_0644(
    tmp_path: Path, first: SelfSigned
) -> None:
    dest = tmp_path / "certs"
    installed = install_pair(validate_pair(first.fullchain, first.privkey), dest, "shop")
    assert installed.cert == dest / "shop" / "fullchain.pem"
    assert os.readlink(installed.cert) == "current/fullchain.pem"
    assert os.readlink(installed.key) == "current/privkey.pem"
    assert os.readlink(dest / "shop" / "current") == f"versions/{installed.version}"
    assert installed.cert.read_bytes() == first.fullchain.read_bytes()
    assert installed.key.read_bytes() == first.privkey.read_bytes()
    assert stat.S_IMODE(installed.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(installed.cert.stat().st_mode) == 0o644
    assert installed.previous is None


def test_second_install_switches_both_files_together_and_keeps_the_previous_version(
    tmp_path: Path, first: SelfSigned, second: SelfSigned
) -> None:
    dest = tmp_path / "certs"
    one = install_pair(validate_pair(first.fullchain, first.privkey), dest, "shop")
    two = install_pair(validate_pair(second.fullchain, second.privkey), dest, "shop")
    assert two.previous == one.version
    assert list_versions(dest / "shop") == sorted([one.version, two.version])
    assert _serial(two.cert) == _serial(second.cert)
    assert key_matches(read_certificates(two.cert)[0], read_private_key(two.key))


def test_reader_resolving_current_always_finds_a_complete_matching_pair_during_installs(
    tmp_path: Path, first: SelfSigned, second: SelfSigned
) -> None:
    dest = tmp_path / "certs"
    pairs = [validate_pair(p.fullchain, p.privkey) for p in (first, second)]
    install_pair(pairs[0], dest, "shop")
    current = dest / "shop" / "current"
    done = threading.Event()

    def keep_installing() -> None:
        try:
            for i in range(30):
                install_pair(pairs[i % 2], dest, "shop", keep=100)
        finally:
            done.set()

    writer = threading.Thread(target=keep_installing)
    writer.start()
    reads = 0
    while not done.is_set() or reads == 0:
        version = current.resolve()  # what a careful reader does: pin one version
        chain = read_certificates(version / "fullchain.pem")
        key = read_private_key(version / "privkey.pem")
        assert key_matches(chain[0], key)
        reads += 1
    writer.join()
    assert reads > 0


def test_rollback_puts_the_previous_pair_back(
    tmp_path: Path, first: SelfSigned, second: SelfSigned
) -> None:
    dest = tmp_path / "certs"
    one = install_pair(validate_pair(first.fullchain, first.privkey), dest, "shop")
    install_pair(validate_pair(second.fullchain, second.privkey), dest, "shop")
    back = rollback(dest, "shop")
    assert back.version == one.version
    assert _serial(dest / "shop" / "fullchain.pem") == _serial(first.cert)
    assert (dest / "shop" / "privkey.pem").read_bytes() == first.privkey.read_bytes()


def test_mismatched_key_is_refused_and_the_installed_files_stay_untouched(
    tmp_path: Path, first: SelfSigned, second: SelfSigned
) -> None:
    dest = tmp_path / "certs"
    install_pair(validate_pair(first.fullchain, first.privkey), dest, "shop")
    before = _snapshot(dest)
    result = CliRunner().invoke(
        cli,
        [
            "install",
            "--cert",
            str(second.fullchain),
            "--key",
            str(first.privkey),
            "--dest",
            str(dest),
            "--name",
            "shop",
            "--no-reload",
        ],
    )
    assert result.exit_code == 1
    assert "the private key does not match the certificate" in result.output
    assert _snapshot(dest) == before


def test_wrongly_ordered_chain_is_refused(tmp_path: Path, first: SelfSigned) -> None:
    leaf, ca = read_certificates(first.fullchain)
    reversed_chain = tmp_path / "reversed.pem"
    write_file(reversed_chain, pem_certs(ca, leaf))
    with pytest.raises(PairError, match="the chain is in reverse order"):
        validate_pair(reversed_chain, first.privkey)


def test_expired_certificate_is_refused(tmp_path: Path, first: SelfSigned) -> None:
    ca = read_certificates(first.ca_cert)[0]
    ca_key = read_private_key(first.ca_key)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    leaf, key = make_leaf(["shop.example.test"], ca, ca_key, days=7, now=long_ago)
    write_file(tmp_path / "old.pem", pem_certs(leaf, ca))
    write_file(tmp_path / "old.key", pem_key(key), 0o600)
    with pytest.raises(PairError, match="the certificate expired on"):
        validate_pair(tmp_path / "old.pem", tmp_path / "old.key")


def test_garbage_key_file_is_refused_with_the_file_named(tmp_path: Path, first: SelfSigned) -> None:
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    with pytest.raises(PairError, match=r"junk\.key: not a valid PEM private key"):
        validate_pair(first.fullchain, junk)


def test_plain_files_from_selfsigned_are_adopted_as_a_version_to_roll_back_to(
    tmp_path: Path, first: SelfSigned, second: SelfSigned
) -> None:
    dest = tmp_path / "certs"
    plain = make_ca_and_leaf(["shop.example.test"], dest / "shop")
    plain_serial = _serial(plain.fullchain)
    install_pair(validate_pair(second.fullchain, second.privkey), dest, "shop")
    assert (dest / "shop" / "fullchain.pem").is_symlink()
    assert _serial(dest / "shop" / "fullchain.pem") == _serial(second.cert)
    rollback(dest, "shop")
    assert _serial(dest / "shop" / "fullchain.pem") == plain_serial


def test_only_the_newest_versions_are_kept(tmp_path: Path) -> None:
    dest = tmp_path / "certs"
    for i in range(4):
        made = make_ca_and_leaf(["shop.example.test"], tmp_path / f"p{i}")
        now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i)
        install_pair(validate_pair(made.fullchain, made.privkey), dest, "shop", keep=2, now=now)
    versions = list_versions(dest / "shop")
    assert len(versions) == 2
    assert [v[:22] for v in versions] == ["0003-20260101T000200Z-", "0004-20260101T000300Z-"]


def test_cli_as_deploy_hook_installs_the_renewed_lineage(tmp_path: Path) -> None:
    lineage = tmp_path / "live" / "shop.example.test"
    made = make_ca_and_leaf(["shop.example.test"], lineage)
    dest = tmp_path / "certs"
    result = CliRunner().invoke(
        cli,
        ["install", "--dest", str(dest), "--no-reload"],
        env={"RENEWED_LINEAGE": str(lineage)},
    )
    assert result.exit_code == 0, result.output
    installed = dest / "shop.example.test" / "fullchain.pem"
    assert _serial(installed) == _serial(made.fullchain)


def test_cli_without_a_pair_or_lineage_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["install", "--dest", str(tmp_path)], env={"RENEWED_LINEAGE": ""}
    )
    assert result.exit_code == 2
    assert "give --lineage DIR or --cert FILE --key FILE" in result.output


# --- reload over a real unix socket --------------------------------------------------------


class ControlPeer:
    """A unix-socket HTTP server answering POST /v1/certs/reload like docs/control-api.md."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.body = status, body
        self.requests: list[tuple[str, str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, await request.json()))
        return web.json_response(self.body, status=self.status)


@pytest.fixture
async def control_socket(tmp_path: Path) -> AsyncIterator[tuple[Path, ControlPeer]]:
    peer = ControlPeer(200, {})
    app = web.Application()
    app.router.add_post("/v1/certs/reload", peer.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    path = tmp_path / "control.sock"
    site = web.UnixSite(runner, str(path))
    await site.start()
    yield path, peer
    await runner.cleanup()


async def _run_certs(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "certs",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_install_asks_edgeproxy_to_reload_and_prints_its_reply(
    tmp_path: Path, first: SelfSigned, control_socket: tuple[Path, ControlPeer]
) -> None:
    sock, peer = control_socket
    dest = tmp_path / "certs"
    cert = str(dest / "shop" / "fullchain.pem")
    peer.body = {
        "ok": True,
        "certificates": [
            {"cert": cert, "sans": ["shop.example.test"], "serial": "2a", "days_left": 88.97}
        ],
    }
    rc, out = await _run_certs(
        "install",
        "--cert",
        str(first.fullchain),
        "--key",
        str(first.privkey),
        "--dest",
        str(dest),
        "--name",
        "shop",
        "--socket",
        str(sock),
    )
    assert rc == 0, out
    assert peer.requests == [("POST", "/v1/certs/reload", {})]
    assert f"  {cert}: shop.example.test (serial 2a, 89 days left)" in out


async def test_refused_reload_exits_4_and_names_the_rollback_command(
    tmp_path: Path, first: SelfSigned, control_socket: tuple[Path, ControlPeer]
) -> None:
    sock, peer = control_socket
    peer.status, peer.body = 409, {"error": "cannot load shop: bad things", "status": 409}
    dest = tmp_path / "certs"
    rc, out = await _run_certs(
        "install", "--lineage", str(first.fullchain.parent), "--dest", str(dest),
        "--socket", str(sock),
    )  # fmt: skip
    assert rc == 4, out
    assert "edgeproxy refused to reload certificates (409): cannot load shop: bad things" in out
    assert f"certs rollback --dest {dest} --name first" in out


async def test_peer_not_allowed_exits_3_and_says_which_setting_allows_it(
    tmp_path: Path, first: SelfSigned, control_socket: tuple[Path, ControlPeer]
) -> None:
    sock, peer = control_socket
    peer.status, peer.body = 403, {"error": "uid 0 is not allowed", "status": 403}
    rc, out = await _run_certs(
        "install", "--lineage", str(first.fullchain.parent), "--dest", str(tmp_path / "certs"),
        "--socket", str(sock),
    )  # fmt: skip
    assert rc == 3, out
    assert f"edgeproxy did not let uid {os.getuid()} use its control socket" in out
    assert "control.allow_uids" in out


async def test_unreachable_edgeproxy_exits_3_and_leaves_the_new_files_installed(
    tmp_path: Path, first: SelfSigned
) -> None:
    dest = tmp_path / "certs"
    rc, out = await _run_certs(
        "install", "--lineage", str(first.fullchain.parent), "--dest", str(dest),
        "--socket", str(tmp_path / "nobody.sock"),
    )  # fmt: skip
    assert rc == 3, out
    assert f"no control socket at {tmp_path / 'nobody.sock'}" in out
    assert "loads them on SIGHUP" in out
    assert _serial(dest / "first" / "fullchain.pem") == _serial(first.cert)


async def test_rollback_cli_reloads_edgeproxy_after_switching_back(
    tmp_path: Path,
    first: SelfSigned,
    second: SelfSigned,
    control_socket: tuple[Path, ControlPeer],
) -> None:
    sock, peer = control_socket
    peer.body = {"ok": True, "certificates": []}
    dest = tmp_path / "certs"
    install_pair(validate_pair(first.fullchain, first.privkey), dest, "shop")
    install_pair(validate_pair(second.fullchain, second.privkey), dest, "shop")
    rc, out = await _run_certs(
        "rollback", "--name", "shop", "--dest", str(dest), "--socket", str(sock)
    )
    assert rc == 0, out
    assert _serial(dest / "shop" / "fullchain.pem") == _serial(first.cert)
    assert len(peer.requests) == 1
    assert json.dumps(peer.requests[0][2]) == "{}"
