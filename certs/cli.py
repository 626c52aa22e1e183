"""`certs`: inspect, check, make, issue, renew and install edgeproxy's certificates.

Exit codes: 0 ok; 1 a certificate, key, config or certbot problem (the message
says which); 2 bad usage; 3 installed but edgeproxy unreachable or this user not
allowed on its socket (it picks the files up on SIGHUP, on its next file check
or on restart); 4 installed but edgeproxy refused to load them.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from certs import acme, control
from certs.check import DEFAULT_MIN_DAYS, check_config
from certs.errors import CertsError, ReloadRefused, ReloadUnreachable
from certs.inspect import CertInfo, FileReport, inspect_file
from certs.install import Installed, ValidPair, install_pair, rollback, validate_pair
from certs.renewal import adopt_renewal as adopt_renewal_config
from certs.renewal import renewal_config
from certs.selfsigned import KeyType, make_ca_and_leaf
from edgeproxy import __version__
from edgeproxy.config import Config, load_config
from edgeproxy.errors import ConfigError

DEFAULT_DEST = Path("/etc/edgeproxy/certs")
EXIT_CODES = (
    "Exit codes: 0 ok; 1 a certificate, key, config or certbot problem (the message says "
    "which); 2 bad usage; 3 installed but edgeproxy unreachable or this user not allowed on "
    "its socket; 4 installed but edgeproxy refused to load them."
)
PathArg = click.Path(path_type=Path)
ExistingFile = click.Path(exists=True, dir_okay=False, path_type=Path)
ExistingDir = click.Path(exists=True, file_okay=False, path_type=Path)


class _Group(click.Group):
    """Turns a CertsError into its message on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CertsError as e:
            click.echo(f"certs: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(
    cls=_Group, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="certs")
def cli() -> None:
    """Certificate tooling for edgeproxy (see docs/certificates.md)."""


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


# --- inspect -----------------------------------------------------------------------------


def _print_cert(i: int, info: CertInfo) -> None:
    click.echo(f"  certificate {i + 1}: {info.subject or '(empty subject)'}")
    click.echo(f"    SANs:       {', '.join(info.sans) or '(none)'}")
    click.echo(f"    issuer:     {info.issuer}")
    click.echo(
        f"    valid:      {info.not_before:%F %T} → {info.not_after:%F %T} UTC "
        f"({info.days_left} days left)"
    )
    click.echo(f"    key:        {info.key_type} ({info.key_size} bits)")
    click.echo(f"    serial:     {info.serial}")
    if info.is_ca:
        click.echo("    CA:         yes")


def _print_report(report: FileReport) -> None:
    click.echo(report.path)
    for i, info in enumerate(report.certificates):
        _print_cert(i, info)
    if len(report.certificates) > 1:
        verdict = "ok (each certificate is issued by the next)" if report.chain_ok else "WRONG"
        click.echo(f"  chain order:  {verdict}")
    if report.key is not None:
        verdict = "matches" if report.key_matches else "DOES NOT MATCH"
        click.echo(f"  key:          {report.key} ({report.key_type}) {verdict}")
    for problem in report.problems:
        click.echo(f"  problem: {problem}")


@cli.command("inspect", epilog=EXIT_CODES)
@click.argument("paths", nargs=-1, required=True, type=ExistingFile)
@click.option("--key", type=ExistingFile, help="Private key to match against the (single) PATH.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def inspect_cmd(paths: tuple[Path, ...], key: Path | None, as_json: bool) -> None:
    """Describe certificates: SANs, issuer, dates, key, serial, chain order, key match.

    Exits 1 when a chain is out of order, a certificate expired or the key does not match.
    """
    if key is not None and len(paths) > 1:
        raise click.UsageError("--key goes with one PATH; inspect the files one by one")
    reports = [inspect_file(path, key) for path in paths]
    if as_json:
        click.echo(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        for report in reports:
            _print_report(report)
    if any(r.problems for r in reports):
        sys.exit(1)


# --- check -------------------------------------------------------------------------------


def _load_config(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        raise CertsError(f"{path} is not a valid edgeproxy config:\n{e}") from e


@cli.command("check", epilog=EXIT_CODES)
@click.option("--config", "config_path", required=True, type=ExistingFile, help="edgeproxy.yml")
@click.option(
    "--days",
    default=DEFAULT_MIN_DAYS,
    show_default=True,
    type=click.IntRange(min=0),
    help="Fail when a certificate expires within this many days.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def check_cmd(config_path: Path, days: int, as_json: bool) -> None:
    """Check that the configured certificates cover every site host and stay valid.

    Exits 1 with one line per problem, 0 when everything is fine.
    """
    config = _load_config(config_path)
    problems = check_config(config, days)
    if as_json:
        click.echo(json.dumps({"ok": not problems, "problems": problems}, indent=2))
    elif problems:
        for problem in problems:
            click.echo(problem, err=True)
    else:
        hosts = sum(len(s.hosts) for s in config.sites)
        click.echo(
            f"ok: {len(config.tls.certificates)} certificate(s), {hosts} site host(s), "
            f"none expires within {days} days"
        )
    if problems:
        sys.exit(1)


# --- selfsigned --------------------------------------------------------------------------


@cli.command("selfsigned", epilog=EXIT_CODES)
@click.option("--hosts", required=True, help="Comma-separated host names (and IPs) for the leaf.")
@click.option("--out", "out_dir", required=True, type=PathArg, help="Directory to write into.")
@click.option("--days", default=90, show_default=True, type=click.IntRange(1, 366))
@click.option("--key-type", type=click.Choice(["ecdsa", "rsa"]), default="ecdsa", show_default=True)
def selfsigned_cmd(hosts: str, out_dir: Path, days: int, key_type: str) -> None:
    """Make a local CA (reused when OUT already has one) and a leaf for staging."""
    made = make_ca_and_leaf(_split(hosts), out_dir, days=days, key_type=_key_type(key_type))
    click.echo(f"CA:        {made.ca_cert} (key {made.ca_key}); clients must trust it")
    click.echo(f"fullchain: {made.fullchain}")
    click.echo(f"key:       {made.privkey}")


def _key_type(value: str) -> KeyType:
    return "rsa" if value == "rsa" else "ecdsa"


# --- issue / renew -----------------------------------------------------------------------


def _certbot_options(f: Callable[..., None]) -> Callable[..., None]:
    """The certbot options shared by issue and renew, handed over as one `certbot` argument."""

    @functools.wraps(f)
    def wrapper(
        config_dir: Path | None,
        work_dir: Path | None,
        logs_dir: Path | None,
        ca_bundle: Path | None,
        certbot_bin: str,
        **kwargs: Any,
    ) -> None:
        dirs = acme.CertbotDirs(config_dir=config_dir, work_dir=work_dir, logs_dir=logs_dir)
        f(certbot=acme.Certbot(dirs=dirs, binary=certbot_bin, ca_bundle=ca_bundle), **kwargs)

    options = [
        click.option(
            "--config-dir",
            type=PathArg,
            help="certbot's --config-dir (accounts, live/ lineages) [default: /etc/letsencrypt].",
        ),
        click.option("--work-dir", type=PathArg, help="certbot's --work-dir."),
        click.option("--logs-dir", type=PathArg, help="certbot's --logs-dir."),
        click.option(
            "--ca-bundle",
            type=ExistingFile,
            help="CA file trusted for the ACME server's HTTPS (pebble in tests).",
        ),
        click.option("--certbot", "certbot_bin", default="certbot", show_default=True),
        click.option(
            "--deploy-hook",
            help="Command certbot runs after each issuance, e.g. 'certs install'.",
        ),
    ]
    decorated: Callable[..., None] = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


@cli.command("issue", epilog=EXIT_CODES)
@click.option(
    "--domains", required=True, help="Comma-separated names; the first names the lineage."
)
@click.option("--email", help="Account e-mail for expiry notices (omit to register without one).")
@click.option("--webroot", type=PathArg, help="Folder edgeproxy serves as acme.webroot.")
@click.option(
    "--config", "config_path", type=ExistingFile, help="Take --webroot from edgeproxy.yml."
)
@click.option("--server", help="ACME directory URL [default: Let's Encrypt production].")
@click.option("--staging", is_flag=True, help="Use Let's Encrypt's staging directory.")
@click.option("--cert-name", help="certbot lineage name [default: the first domain].")
@click.option("--key-type", type=click.Choice(["ecdsa", "rsa"]), default="ecdsa", show_default=True)
@_certbot_options
def issue_cmd(
    domains: str,
    email: str | None,
    webroot: Path | None,
    config_path: Path | None,
    server: str | None,
    staging: bool,
    cert_name: str | None,
    key_type: str,
    certbot: acme.Certbot,
    deploy_hook: str | None,
) -> None:
    """Obtain a certificate with certbot in webroot mode through edgeproxy's HTTP listener."""
    if webroot is None and config_path is not None:
        webroot = _load_config(config_path).acme.webroot
    if webroot is None:
        raise click.UsageError("give --webroot DIR (or --config with acme.webroot set)")
    names = _split(domains)
    args = acme.issue_args(
        names,
        webroot,
        email=email,
        server=server,
        staging=staging,
        deploy_hook=deploy_hook,
        cert_name=cert_name,
        key_type=key_type,
    )
    click.echo(f"certs: requesting a certificate for {', '.join(names)} (webroot {webroot})")
    certbot.run(args)
    lineage = certbot.dirs.lineage(cert_name or names[0])
    click.echo(f"certs: issued; lineage {lineage}")
    report = inspect_file(lineage / "fullchain.pem", lineage / "privkey.pem")
    _print_report(report)
    if deploy_hook is None:
        click.echo(f"next: certs install --lineage {lineage} (or re-run with --deploy-hook)")


@cli.command("renew", epilog=EXIT_CODES)
@click.option("--cert-name", help="Renew only this lineage.")
@click.option("--force-renewal", is_flag=True, help="Renew even if not due (certbot passthrough).")
@click.option(
    "--no-random-sleep-on-renew",
    "no_random_sleep",
    is_flag=True,
    help="Do not let certbot sleep up to 8 minutes first (it does when not on a terminal).",
)
@_certbot_options
def renew_cmd(
    cert_name: str | None,
    force_renewal: bool,
    no_random_sleep: bool,
    certbot: acme.Certbot,
    deploy_hook: str | None,
) -> None:
    """Run `certbot renew`; certbot calls each lineage's deploy hook after a renewal."""
    args = acme.renew_args(cert_name, force_renewal, no_random_sleep, deploy_hook)
    certbot.run(args)
    click.echo("certs: renew finished")


# --- install / rollback ------------------------------------------------------------------

_dest_option = click.option(
    "--dest",
    type=PathArg,
    default=DEFAULT_DEST,
    show_default=True,
    envvar="CERTS_DEST",
    help="edgeproxy's certificate directory (env CERTS_DEST).",
)
_socket_option = click.option(
    "--socket",
    "socket_path",
    type=PathArg,
    default=control.DEFAULT_SOCKET,
    show_default=True,
    envvar="EDGEPROXY_SOCKET",
    help="edgeproxy's control socket (env EDGEPROXY_SOCKET).",
)
_no_reload_option = click.option(
    "--no-reload", is_flag=True, help="Only write the files; do not ask edgeproxy to reload."
)


def _reload(installed: Installed, socket_path: Path, no_reload: bool) -> None:
    if no_reload:
        click.echo("certs: not asking edgeproxy to reload (--no-reload)")
        return
    still = (
        f"The new files are installed in {installed.directory}; edgeproxy loads them on "
        "SIGHUP (systemctl reload edgeproxy), on its next file check or on restart"
    )
    try:
        reply = control.reload_certificates(socket_path)
    except ReloadUnreachable as e:
        raise ReloadUnreachable(f"{e}. {still}") from e
    except ReloadRefused as e:
        if e.status == 403:
            raise ReloadUnreachable(
                f"edgeproxy did not let uid {os.getuid()} use its control socket ({e}); add it "
                "to control.allow_uids (or its group to allow_gids) or run as an allowed user. "
                + still
            ) from e
        raise ReloadRefused(
            e.status,
            f"{e}. The new files are installed in {installed.directory}; "
            f"`certs rollback --dest {installed.directory.parent} --name "
            f"{installed.directory.name}` puts the previous ones back",
        ) from e
    click.echo("certs: edgeproxy reloaded its certificates:")
    for entry in reply.get("certificates", []):
        if isinstance(entry, dict):
            sans = ", ".join(entry.get("sans", []))
            days = entry.get("days_left")
            left = f"{days:.0f} days left" if isinstance(days, int | float) else "days left unknown"
            serial = f"serial {entry['serial']}, " if "serial" in entry else ""
            click.echo(f"  {entry.get('cert')}: {sans} ({serial}{left})")


def _default_name(pair: ValidPair) -> str:
    return pair.sans[0].removeprefix("*.") if pair.sans else f"serial-{pair.serial[:16]}"


@cli.command("install", epilog=EXIT_CODES)
@click.option("--lineage", type=ExistingDir, help="certbot lineage (live/NAME) to install.")
@click.option("--cert", "cert_path", type=ExistingFile, help="Certificate chain, leaf first.")
@click.option("--key", "key_path", type=ExistingFile, help="Private key of --cert.")
@click.option("--name", help="Folder under --dest [default: the lineage name or first SAN].")
@click.option("--keep", default=5, show_default=True, type=click.IntRange(2), help="Versions kept.")
@click.option(
    "--adopt-renewal",
    is_flag=True,
    help="With --lineage (one issued for nginx): make its future renewals answer the "
    "challenge from --webroot and run this install as their deploy hook; the old renewal "
    "config is kept beside it.",
)
@click.option(
    "--webroot",
    type=PathArg,
    default=Path("/var/www/certbot"),
    show_default=True,
    help="edgeproxy's acme.webroot, for --adopt-renewal.",
)
@_dest_option
@_socket_option
@_no_reload_option
def install_cmd(
    lineage: Path | None,
    cert_path: Path | None,
    key_path: Path | None,
    name: str | None,
    keep: int,
    adopt_renewal: bool,
    webroot: Path,
    dest: Path,
    socket_path: Path,
    no_reload: bool,
) -> None:
    """Validate a pair, install it atomically as DEST/NAME/{fullchain,privkey}.pem, reload.

    With no --lineage/--cert it reads RENEWED_LINEAGE, so it works as certbot's
    --deploy-hook. A bad pair is refused and nothing changes. For certificates
    certbot already renews for nginx: `--lineage /etc/letsencrypt/live/NAME
    --adopt-renewal` (docs/migrating-from-nginx.md, the cutover).
    """
    if adopt_renewal and lineage is None:
        raise click.UsageError("--adopt-renewal goes with --lineage /etc/letsencrypt/live/NAME")
    if lineage is None and cert_path is None and os.environ.get("RENEWED_LINEAGE"):
        lineage = Path(os.environ["RENEWED_LINEAGE"])
    if lineage is not None:
        if cert_path or key_path:
            raise click.UsageError("give --lineage or --cert/--key, not both")
        cert_path, key_path = lineage / "fullchain.pem", lineage / "privkey.pem"
        name = name or lineage.name
    if cert_path is None or key_path is None:
        raise click.UsageError(
            "give --lineage DIR or --cert FILE --key FILE (or run as certbot's deploy hook)"
        )
    pair = validate_pair(cert_path, key_path)
    name = name or _default_name(pair)
    if "/" in name or name in ("", ".", ".."):
        raise click.UsageError(f"--name {name!r} must be a plain folder name")
    installed = install_pair(pair, dest, name, keep=keep)
    click.echo(
        f"certs: installed {', '.join(pair.sans)} (serial {pair.serial}, expires "
        f"{pair.leaf.not_valid_after_utc:%F}) as {installed.directory}/"
        f"versions/{installed.version}; previous: {installed.previous or 'none'}"
    )
    if adopt_renewal:
        assert lineage is not None
        # Renewals reload edgeproxy even when this install did not (--no-reload before
        # edgeproxy runs, during the cutover).
        hook = [sys.executable, "-m", "certs", "install", "--dest", str(dest)]
        hook += ["--socket", str(socket_path)]
        kept = adopt_renewal_config(lineage.absolute(), webroot, pair.sans, shlex.join(hook))
        click.echo(
            f"certs: {renewal_config(lineage)} now renews through the webroot {webroot} and "
            f"installs with `certs install`; the previous one is kept as {kept}"
        )
    _reload(installed, socket_path, no_reload)


@cli.command("rollback", epilog=EXIT_CODES)
@click.option("--name", required=True, help="Folder under --dest.")
@_dest_option
@_socket_option
@_no_reload_option
def rollback_cmd(name: str, dest: Path, socket_path: Path, no_reload: bool) -> None:
    """Put back the version installed before the current one, then reload edgeproxy."""
    installed = rollback(dest, name)
    click.echo(
        f"certs: {installed.directory} now serves versions/{installed.version} "
        f"(was {installed.previous})"
    )
    _reload(installed, socket_path, no_reload)


def main() -> None:
    cli(prog_name="certs")
