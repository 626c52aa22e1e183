"""deploy.yml against edgeproxy.yml: the settings both files name must agree.

A deploy starts the app on the deploy config's ports and waits for edgeproxy
to call it healthy on the upstreams of *its* config; when the two disagree the
deploy only finds out at the health deadline. `switchctl deploy --check` runs
these checks first, and each problem names both keys.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from edgeproxy.config import Config, parse_address
from edgeproxy.routing.router import Router
from switchctl.deploy.config import DeployConfig

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def cross_check(cfg: DeployConfig, proxy: Config, proxy_file: str) -> list[str]:
    """Every disagreement between the deploy config and edgeproxy's config (empty: they agree)."""
    app = proxy.apps.get(cfg.app)
    if app is None:
        known = ", ".join(proxy.apps) or "none"
        return [
            f"app: {cfg.app!r} is not an app of {proxy_file} (apps: {known}); "
            f"rename one of them or add `apps: {{{cfg.app}: ...}}` there"
        ]
    problems: list[str] = []
    server = cfg.roles[cfg.server_role]
    for color in cfg.colors:
        port = server.ports[color]
        where = f"roles.{cfg.server_role}.ports.{color}"
        proxy_color = app.colors.get(color)
        if proxy_color is None:
            problems.append(
                f"colors: {color!r} is not a color of apps.{cfg.app} in {proxy_file} "
                f"(colors: {', '.join(app.colors)})"
            )
            continue
        if cfg.hosts:
            problems += _host_upstreams(cfg, color, proxy_color.upstreams, proxy_file)
            continue
        ports = {
            urlsplit(u).port or 80
            for u in proxy_color.upstreams
            if (urlsplit(u).hostname or "") in LOOPBACK
        }
        if port not in ports:
            problems.append(
                f"{where}: {color} listens on {port}, but {proxy_file} sends {color}'s traffic "
                f"to {', '.join(proxy_color.upstreams)} (apps.{cfg.app}.colors.{color}.upstreams); "
                "make them the same port or the deploy waits for a health check that cannot pass"
            )
    if server.health_path is not None and server.health_path != app.health.path:
        problems.append(
            f"roles.{cfg.server_role}.health_path: {server.health_path}, but {proxy_file} checks "
            f"{app.health.path} (apps.{cfg.app}.health.path); use the same path in both"
        )
    if app.override.header is None:
        problems.append(
            f"smoke: {proxy_file} has no tester override header (apps.{cfg.app}.override.header), "
            "so smoke checks cannot reach the new color before it takes traffic"
        )
    elif cfg.smoke.checks and cfg.smoke.header.lower() != app.override.header.lower():
        problems.append(
            f"smoke.header: {cfg.smoke.header}, but {proxy_file} takes the override from "
            f"{app.override.header} (apps.{cfg.app}.override.header); use the same header"
        )
    problems += _smoke_listener(cfg, proxy, proxy_file)
    router = Router(proxy)
    for i, check in enumerate(cfg.smoke.checks):
        if check.host is None:
            continue
        site = router.site_for(check.host.encode())
        if site is None:
            problems.append(
                f"smoke.checks[{i}].host: no site of {proxy_file} serves {check.host} "
                "(sites[].hosts); fix the host or add it to a site"
            )
            continue
        route = site.route(check.path.encode())
        if route is None or route.app != cfg.app:
            target = "no route" if route is None else f"route {route.prefix} (not {cfg.app})"
            problems.append(
                f"smoke.checks[{i}]: {check.host}{check.path} goes to {target} in {proxy_file}, "
                f"so it would not check {cfg.app}'s new color"
            )
            continue
        if site.https_redirect and urlsplit(cfg.smoke.url).scheme == "http":
            problems.append(
                f"smoke.url: {cfg.smoke.url} is plain HTTP, where {proxy_file} redirects "
                f"{check.host} to https (sites[].https_redirect); smoke checks never follow a "
                "redirect: use edgeproxy's HTTPS listener, e.g. https://127.0.0.1:443"
            )
    return problems


def _smoke_listener(cfg: DeployConfig, proxy: Config, proxy_file: str) -> list[str]:
    """smoke.url must be a listener edgeproxy's config opens, on loopback."""
    if not cfg.smoke.checks:
        return []
    u = urlsplit(cfg.smoke.url)
    listen = proxy.listen.https if u.scheme == "https" else proxy.listen.http
    key = f"listen.{u.scheme}"
    if listen is None:
        return [
            f"smoke.url: {cfg.smoke.url}, but {proxy_file} has no {key} listener; "
            "point smoke.url at the listener visitors use"
        ]
    port = u.port or (443 if u.scheme == "https" else 80)
    _, listen_port = parse_address(listen)
    problems = []
    if listen_port not in (0, port):
        problems.append(
            f"smoke.url: port {port}, but {proxy_file} listens on {listen} ({key}); "
            "use the same port"
        )
    if (u.hostname or "") not in LOOPBACK:
        problems.append(
            f"smoke.url: {u.hostname} is not a loopback address; edgeproxy honours the tester "
            "override only from apps.*.override.allow_from (loopback by default), so use "
            f"127.0.0.1:{port}"
        )
    return problems


def endpoint(url: str) -> tuple[str, int]:
    """(host, port) of an upstream URL, loopback names made one."""
    u = urlsplit(url)
    host = (u.hostname or "").lower()
    return ("127.0.0.1" if host in LOOPBACK else host), u.port or 80


def _host_upstreams(
    cfg: DeployConfig, color: str, upstreams: list[str], proxy_file: str
) -> list[str]:
    """With `hosts`, the color's pool must list each host's server port, and nothing else."""
    key = f"apps.{cfg.app}.colors.{color}.upstreams"
    listed = {endpoint(u): u for u in upstreams}
    wanted = dict(zip(cfg.upstreams(color), cfg.app_hosts, strict=True))
    problems = [
        f"hosts: {h.name} runs {color}'s {cfg.server_role} at {url}, but {proxy_file} does not "
        f"list it in {key} ({', '.join(upstreams)}); add it, or edgeproxy never sends it "
        "traffic and the deploy waits for a health check that cannot pass"
        for url, h in wanted.items()
        if endpoint(url) not in listed
    ]
    ours = {endpoint(u) for u in wanted}
    problems += [
        f"{key}: {u} in {proxy_file} is not {color}'s {cfg.server_role} on any of the deploy "
        f"config's hosts ({', '.join(h.name for h in cfg.app_hosts)}); remove it or list its host"
        for end, u in listed.items()
        if end not in ours
    ]
    return problems
