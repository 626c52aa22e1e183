"""Observe a server for `switchctl setup`: prerequisites, accounts, folders, config, certs, stack."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml

from certs.inspect import read_certificates
from edgeproxy.config import Config, load_config
from edgeproxy.errors import ConfigError
from switchctl.deploy.config import DeployConfig, read_env_file
from switchctl.deploy.errors import DeployConfigError
from switchctl.deploy.proxyctl import check_config, runner_for
from switchctl.setup.accounts import Accounts
from switchctl.setup.configedit import set_control_group
from switchctl.setup.plan import (
    CertObs,
    Check,
    ConfigObs,
    DirObs,
    DirWant,
    ServiceObs,
    SetupObserved,
)

SUPPORTED = {("ubuntu", "22.04"), ("ubuntu", "24.04"), ("debian", "12")}
SELF_SIGNED_ORG = "edgeproxy staging"
"""The organization `certs selfsigned` and setup's bootstrap certificates carry."""
_REQUIRED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?")


def compose_command() -> list[str] | None:
    """`docker compose` (v2) when the plugin is there, else `docker-compose` (v1), else None."""
    docker_bin = shutil.which("docker")
    if docker_bin is not None:
        p = subprocess.run([docker_bin, "compose", "version"], capture_output=True, check=False)
        if p.returncode == 0:
            return [docker_bin, "compose"]
    v1 = shutil.which("docker-compose")
    return [v1] if v1 is not None else None


def _os_release() -> dict[str, str]:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        out[key] = value.strip().strip('"')
    return out


def _host_python() -> tuple[int, int] | None:
    py = shutil.which("python3")
    if py is None:
        return None
    p = subprocess.run(
        [py, "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        major, minor = p.stdout.split()
        return int(major), int(minor)
    except ValueError:
        return None


def prerequisites(client: docker.DockerClient | None, docker_error: str) -> list[Check]:
    checks = []
    rel = _os_release()
    name = rel.get("PRETTY_NAME", "unknown")
    supported = (rel.get("ID", ""), rel.get("VERSION_ID", "")) in SUPPORTED
    checks.append(
        Check(
            "operating system",
            supported,
            name,
            "" if supported else "tested on Ubuntu 22.04/24.04 and Debian 12; others may work",
        )
    )
    if client is not None:
        v = client.version()
        checks.append(Check("docker", True, f"{v.get('Version')} (API {v.get('ApiVersion')})"))
    else:
        checks.append(
            Check(
                "docker",
                False,
                docker_error,
                "apt-get install -y docker.io && systemctl enable --now docker "
                "(and run setup as root, or as a member of the docker group)",
                blocking=True,
            )
        )
    compose = compose_command()
    checks.append(
        Check(
            "docker compose",
            compose is not None,
            " ".join(compose) if compose else "neither `docker compose` nor `docker-compose`",
            ""
            if compose
            else "apt-get install -y docker-compose-v2 (Ubuntu) or docker-compose (Debian 12)",
        )
    )
    here = sys.version_info[:2]
    host = _host_python()
    if host is not None and host >= (3, 11):
        checks.append(Check("python", True, f"python3 {host[0]}.{host[1]} on this host"))
    else:
        shown = f"{host[0]}.{host[1]}" if host else "none"
        checks.append(
            Check(
                "python",
                True,
                f"this switchctl runs on Python {here[0]}.{here[1]}; the host's python3 is "
                f"{shown} (edgeproxy needs 3.11+: run switchctl from the edgeproxy image, "
                "see docs/deploying.md)",
            )
        )
    certbot = shutil.which("certbot")
    checks.append(
        Check(
            "certbot",
            certbot is not None,
            certbot or "not installed (needed for real certificates, not for the first start)",
            "" if certbot else "apt-get install -y certbot",
        )
    )
    return checks


def _dir_obs(path: Path) -> DirObs:
    try:
        st = path.stat()
    except FileNotFoundError:
        return DirObs(False)
    return DirObs(True, st.st_mode & 0o7777, st.st_uid, st.st_gid)


def wanted_dirs(cfg: DeployConfig, proxy: Config | None, deploy_config_dir: Path) -> list[DirWant]:
    """Every folder setup creates, as on the server, with its mode and owner."""
    s = cfg.setup
    server = _server_paths(cfg)
    out = [
        DirWant(server(cfg.edgeproxy.config).parent, 0o2775, "root", s.group),
        DirWant(deploy_config_dir, 0o2775, "root", s.group),
        DirWant(server(cfg.env_file).parent, 0o2750, "root", s.group),
        DirWant(server(cfg.state_dir), 0o750, s.user, s.group),
    ]
    if cfg.edgeproxy.config_source is not None:
        out.append(DirWant(server(cfg.edgeproxy.config_source).parent, 0o2775, s.user, s.group))
    if s.compose_env_file is not None:
        out.append(DirWant(server(s.compose_env_file).parent, 0o750, "root", "root"))
    if proxy is not None:
        out.append(DirWant(proxy.control.socket.parent, 0o750, "root", s.group))
        if proxy.state_file is not None:
            out.append(DirWant(proxy.state_file.parent, 0o755, "root", "root"))
        if proxy.acme.webroot is not None:
            out.append(DirWant(proxy.acme.webroot, 0o755, "root", "root"))
        for c in proxy.tls.certificates:
            for p in (c.cert.parent.parent, c.cert.parent, c.key.parent):
                out.append(DirWant(p, 0o755, "root", "root"))
    seen: set[Path] = set()
    unique = []
    for d in out:
        if d.path not in seen:
            seen.add(d.path)
            unique.append(d)
    return sorted(unique, key=lambda d: (len(d.path.parts), str(d.path)))


def _server_paths(cfg: DeployConfig) -> Any:
    """The server path of a path that the deploy config holds under its root."""
    root = cfg.root

    def server(path: Path) -> Path:
        if root == Path("/"):
            return path
        try:
            return Path("/") / path.relative_to(root)
        except ValueError:
            return path

    return server


def hosts_for(proxy: Config, cert: Path) -> tuple[str, ...]:
    """The names a certificate entry stands for: its folder's site (certs install's layout:
    the folder is named after the first name), else every site host."""
    folder = cert.parent.name
    for site in proxy.sites:
        if folder in site.hosts:
            return (folder, *[h for h in site.hosts if h != folder])
    return tuple(dict.fromkeys(h for site in proxy.sites for h in site.hosts)) or (folder,)


def _is_self_signed(path: Path) -> bool:
    try:
        leaf = read_certificates(path)[0]
    except Exception:
        return False
    return SELF_SIGNED_ORG in leaf.issuer.rfc4514_string()


def parse_desired(text: str) -> tuple[Config | None, list[str]]:
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write(text)
    path = Path(f.name)
    try:
        problems = check_config(path)
        try:
            return load_config(path), problems
        except ConfigError:
            return None, problems
    finally:
        path.unlink()


def _read(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def compose_services(cfg: DeployConfig, client: docker.DockerClient | None) -> list[ServiceObs]:
    s = cfg.setup
    if s.compose_file is None:
        return []
    try:
        services = (yaml.safe_load(s.compose_file.read_text()) or {}).get("services") or {}
    except OSError:
        return [ServiceObs(f"(compose file {s.compose_file} is missing)", "missing")]
    out = []
    for name in services:
        state = "missing"
        if client is not None:
            found = client.containers.list(
                all=True,
                filters={
                    "label": [
                        f"com.docker.compose.project={s.compose_project}",
                        f"com.docker.compose.service={name}",
                    ]
                },
            )
            if found:
                state = found[0].status
        out.append(ServiceObs(str(name), state))
    return out


def compose_container_names(cfg: DeployConfig) -> set[str]:
    if cfg.setup.compose_file is None:
        return set()
    try:
        services = (yaml.safe_load(cfg.setup.compose_file.read_text()) or {}).get("services")
    except OSError:
        return set()
    return {str(v.get("container_name")) for v in (services or {}).values() if isinstance(v, dict)}


def observe_setup(
    cfg: DeployConfig,
    accounts: Accounts,
    client: docker.DockerClient | None,
    docker_error: str,
    desired_path: Path | None,
    deploy_config: Path,
    given_config: Path | None,
) -> SetupObserved:
    """`deploy_config`: the server path deploy reads by default; `given_config`: the file
    setup was given with -c when it is another one (setup installs it there)."""
    s = cfg.setup
    uid, gid = accounts.uid(s.user), accounts.gid(s.group)
    live = _read(cfg.edgeproxy.config)
    source = _read(cfg.edgeproxy.config_source)
    if desired_path is not None:
        raw, desired_from = _read(desired_path), str(desired_path)
        if raw is None:
            raw, desired_from = None, f"{desired_path} (missing)"
    elif live is not None:
        raw, desired_from = live, str(cfg.edgeproxy.config)
    else:
        raw, desired_from = source, str(cfg.edgeproxy.config_source)
    desired = None
    problems: list[str] = []
    proxy: Config | None = None
    if raw is not None:
        # The gid goes in before the check; a group not created yet is planned with a
        # placeholder that the executor replaces (the check does not look groups up).
        desired = set_control_group(raw, gid if gid is not None else 0)
        proxy, problems = parse_desired(desired)
    server = cfg.on_server
    certs = []
    if proxy is not None and not problems:
        for c in proxy.tls.certificates:
            cert, key = server(c.cert), server(c.key)
            present = cert.exists() and key.exists()
            certs.append(
                CertObs(
                    c.cert,
                    c.key,
                    hosts_for(proxy, c.cert),
                    present,
                    present and _is_self_signed(cert),
                )
            )
    env_missing: tuple[str, ...] = ()
    env_exists = cfg.env_file.exists()
    if env_exists:
        try:
            read_env_file(cfg.env_file, cfg.required_env, check_mode=False)
        except DeployConfigError as e:
            env_missing = tuple(p.split(" is missing")[0] for p in e.problems if " is missing" in p)
    else:
        env_missing = tuple(cfg.required_env)
    compose_env_missing: tuple[str, ...] = ()
    compose_env_exists = s.compose_env_file is not None and s.compose_env_file.exists()
    if s.compose_file is not None:
        needed = _REQUIRED_VAR.findall(_read(s.compose_file) or "")
        have: dict[str, str] = {}
        if s.compose_env_file is not None and compose_env_exists:
            try:
                have = read_env_file(s.compose_env_file, [], check_mode=False).values
            except DeployConfigError:
                have = {}
        compose_env_missing = tuple(
            dict.fromkeys(v for v in needed if not have.get(v) and not os.environ.get(v))
        )
    proxy_status = None
    if client is not None:
        proxy_status = runner_for(cfg.edgeproxy, client).state().status
    server_dirs = wanted_dirs(cfg, proxy, deploy_config.parent)
    extra = tuple(g for g in ("docker",) if accounts.gid(g) is not None)
    return SetupObserved(
        app=cfg.app,
        user=s.user,
        group=s.group,
        uid=uid,
        gid=gid,
        user_groups=frozenset(accounts.groups_of(s.user)),
        extra_groups=extra,
        accounts_where=accounts.where,
        checks=tuple(prerequisites(client, docker_error)),
        dirs=tuple((d, _dir_obs(server(d.path))) for d in server_dirs),
        env_file=_server_paths(cfg)(cfg.env_file),
        env_file_exists=env_exists,
        env_missing=env_missing,
        compose_env_file=(
            _server_paths(cfg)(s.compose_env_file) if s.compose_env_file is not None else None
        ),
        compose_env_exists=compose_env_exists,
        compose_env_missing=compose_env_missing,
        config=ConfigObs(
            live=live,
            raw=raw,
            desired=desired,
            desired_from=desired_from,
            problems=tuple(problems),
            source=source,
            has_source=cfg.edgeproxy.config_source is not None,
            live_path=_server_paths(cfg)(cfg.edgeproxy.config),
            source_path=(
                _server_paths(cfg)(cfg.edgeproxy.config_source)
                if cfg.edgeproxy.config_source is not None
                else None
            ),
        ),
        deploy_config_path=deploy_config,
        deploy_config_given=_read(given_config),
        deploy_config_live=_read(cfg.on_server(deploy_config)),
        certs=tuple(certs),
        compose_file=s.compose_file,
        services=tuple(compose_services(cfg, client)),
        proxy_status=proxy_status,
        proxy_in_compose=(cfg.edgeproxy.container or "") in compose_container_names(cfg),
        webroot=proxy.acme.webroot if proxy is not None else None,
        certs_dest=(
            proxy.tls.certificates[0].cert.parent.parent
            if proxy is not None and proxy.tls.certificates
            else None
        ),
        certbot=shutil.which("certbot") is not None,
    )
