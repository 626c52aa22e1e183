"""The deploy config's `hosts` and its agreement with edgeproxy's color pools (pure, no docker)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeproxy.config import Config, parse_config
from switchctl.deploy.config import parse_deploy_config
from switchctl.deploy.crosscheck import cross_check
from switchctl.deploy.errors import DeployConfigError
from switchctl.deploy.hosts import upstreams_fit

DOCS = Path(__file__).resolve().parent.parent / "docs" / "deploying.md"

DEPLOY = """
app: shop
image: ghcr.io/acme/shop:{ref}
env_file: app.env
roles:
  server: {traffic: true, ports: {blue: 9000, green: 9002}, health_path: /health}
  worker: {ports: {blue: 9001, green: 9003}}
edgeproxy: {systemd_unit: edgeproxy.service}
"""

HOSTS = """
hosts:
  - {name: app1, docker: "ssh://deploy@10.0.0.11", address: 10.0.0.11}
  - {name: app2, docker: "ssh://deploy@10.0.0.12:2222", address: 10.0.0.12}
"""

PROXY = """
listen: {http: "127.0.0.1:8080"}
apps:
  shop:
    colors:
      blue: {upstreams: [%s]}
      green: {upstreams: [%s]}
    health: {path: /health}
    override: {header: X-Edgeproxy-Color}
sites:
  - {hosts: [shop.test], routes: [{path: /, app: shop}]}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(DeployConfigError) as e:
        parse_deploy_config(text, "deploy.yml")
    return e.value.problems


def proxy(blue: list[str], green: list[str]) -> Config:
    return parse_config(PROXY % (", ".join(blue), ", ".join(green)))


def test_without_hosts_the_app_runs_on_this_machines_dockerd_on_loopback() -> None:
    cfg = parse_deploy_config(DEPLOY)
    assert [(h.name, h.docker, h.address) for h in cfg.app_hosts] == [("local", None, "127.0.0.1")]
    assert cfg.upstreams("green") == ["http://127.0.0.1:9002"]


def test_listed_hosts_give_each_color_one_upstream_per_host() -> None:
    cfg = parse_deploy_config(DEPLOY + HOSTS)
    assert [h.name for h in cfg.app_hosts] == ["app1", "app2"]
    assert cfg.upstreams("blue") == ["http://10.0.0.11:9000", "http://10.0.0.12:9000"]


def test_a_port_offset_moves_every_role_port_of_that_host() -> None:
    text = DEPLOY + "hosts: [{name: a, docker: 'unix:///run/a.sock'}, "
    text += "{name: b, docker: 'unix:///run/b.sock', port_offset: 100}]\n"
    cfg = parse_deploy_config(text)
    b = cfg.app_hosts[1]
    assert cfg.port_on(b, "worker", "green") == 9103
    assert cfg.upstreams("green") == ["http://127.0.0.1:9002", "http://127.0.0.1:9102"]


def test_two_hosts_on_one_address_without_an_offset_are_refused_naming_the_clash() -> None:
    text = DEPLOY + "hosts: [{name: a, docker: 'unix:///run/a.sock'}, "
    text += "{name: b, docker: 'unix:///run/b.sock'}]\n"
    [problem] = problems(text)
    assert "hosts[1] (b): roles.server.ports.blue: 127.0.0.1:9000 is also a server/blue" in problem
    assert "port_offset" in problem


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("{name: a, docker: 'tcp://10.0.0.1:2375'}", "expected unix:///PATH"),
        ("{name: a, docker: 'ssh://10.0.0.1'}", "ssh://USER@HOST[:PORT]"),
        ("{name: 'a b', docker: 'unix:///run/a.sock'}", "host name 'a b'"),
        ("{name: a, address: 'http://10.0.0.1'}", "no scheme, no port"),
        ("{name: a, port_offset: -1}", "hosts[0].port_offset"),
        ("{name: a, dockr: 'unix:///x'}", "hosts[0].dockr: unknown key"),
    ],
)
def test_a_bad_host_entry_is_an_error_that_names_the_key(host: str, expected: str) -> None:
    [problem] = problems(DEPLOY + f"hosts: [{host}]\n")
    assert expected in problem
    assert problem.startswith("deploy.yml: hosts")


def test_a_host_named_twice_is_refused() -> None:
    text = DEPLOY + "hosts: [{name: a, address: 10.0.0.1}, {name: a, address: 10.0.0.2}]\n"
    assert "the name 'a' is given twice" in problems(text)[0]


def test_the_cross_check_passes_when_each_pool_lists_every_hosts_upstream() -> None:
    cfg = parse_deploy_config(DEPLOY + HOSTS)
    p = proxy(
        ["http://10.0.0.11:9000", "http://10.0.0.12:9000"],
        ["http://10.0.0.12:9002", "http://10.0.0.11:9002"],
    )
    assert cross_check(cfg, p, "edgeproxy.yml") == []


def test_the_cross_check_names_the_host_whose_upstream_a_pool_is_missing() -> None:
    cfg = parse_deploy_config(DEPLOY + HOSTS)
    p = proxy(
        ["http://10.0.0.11:9000", "http://10.0.0.12:9000"],
        ["http://10.0.0.11:9002"],
    )
    [problem] = cross_check(cfg, p, "edgeproxy.yml")
    assert problem.startswith(
        "hosts: app2 runs green's server at http://10.0.0.12:9002, but edgeproxy.yml does not "
        "list it in apps.shop.colors.green.upstreams (http://10.0.0.11:9002)"
    )


def test_the_cross_check_names_an_upstream_that_no_listed_host_runs() -> None:
    cfg = parse_deploy_config(DEPLOY + HOSTS)
    p = proxy(
        ["http://10.0.0.11:9000", "http://10.0.0.12:9000", "http://10.0.0.13:9000"],
        ["http://10.0.0.11:9002", "http://10.0.0.12:9002"],
    )
    [problem] = cross_check(cfg, p, "edgeproxy.yml")
    assert "apps.shop.colors.blue.upstreams: http://10.0.0.13:9000" in problem
    assert "(app1, app2)" in problem


def test_loopback_names_are_one_address_in_the_cross_check() -> None:
    text = DEPLOY + "hosts: [{name: a, docker: 'unix:///run/a.sock'}, "
    text += "{name: b, docker: 'unix:///run/b.sock', port_offset: 100}]\n"
    cfg = parse_deploy_config(text)
    p = proxy(
        ["http://localhost:9000", "http://127.0.0.1:9100"],
        ["http://127.0.0.1:9002", "http://localhost:9102"],
    )
    assert cross_check(cfg, p, "edgeproxy.yml") == []


def test_the_multi_host_example_in_the_deploying_guide_is_a_valid_config_and_agrees() -> None:
    blocks = re.findall(r"<!-- hosts-example: (\w+) -->\n```yaml\n(.*?)```", DOCS.read_text(), re.S)
    found = dict(blocks)
    assert set(found) == {"deploy", "edgeproxy"}, "docs/deploying.md lost its multi-host example"
    deploy = yaml.safe_load(DEPLOY)
    deploy.update(yaml.safe_load(found["deploy"]))
    cfg = parse_deploy_config(yaml.safe_dump(deploy))
    assert len(cfg.hosts) >= 2
    shop = yaml.safe_load(PROXY % ("x", "y"))
    shop["apps"]["shop"]["colors"] = yaml.safe_load(found["edgeproxy"])["apps"]["shop"]["colors"]
    p = parse_config(yaml.safe_dump(shop))
    assert cross_check(cfg, p, "edgeproxy.yml") == []


def health(app1: bool | None, app2: bool) -> dict[str, object]:
    """edgeproxy's GET /v1/health for green, each host's upstream fit or not (None: absent)."""
    ups = [{"url": "http://10.0.0.12:9002", "healthy": app2}]
    if app1 is not None:
        ups.insert(0, {"url": "http://10.0.0.11:9002", "healthy": app1})
    failing = [] if app2 else ["http://10.0.0.12:9002: GET /health -> 503"]
    view = {"healthy": bool(app1) or app2, "failing_checks": failing, "upstreams": ups}
    return {"apps": {"shop": {"green": view}}}


def test_edgeproxy_agrees_only_when_every_hosts_upstream_of_the_color_is_fit() -> None:
    cfg = parse_deploy_config(DEPLOY + HOSTS)
    assert upstreams_fit(cfg, health(True, True), "green").ok
    waiting = upstreams_fit(cfg, health(True, False), "green")
    assert not waiting.ok
    assert waiting.detail == (
        "edgeproxy: green not yet healthy on app2 (http://10.0.0.12:9002): "
        "http://10.0.0.12:9002: GET /health -> 503"
    )
    # A pool that lacks a host's upstream never agrees (the cross-check reports why).
    assert "app1 (http://10.0.0.11:9002)" in upstreams_fit(cfg, health(None, True), "green").detail


def test_check_reports_every_unreachable_host_by_name_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text("JWT_SECRET=x\n")
    (tmp_path / "app.env").chmod(0o600)
    hosts = (
        "hosts:\n"
        "  - {name: app1, docker: 'ssh://deploy@127.0.0.1:1'}\n"
        f"  - {{name: app2, docker: 'unix://{tmp_path}/none.sock', port_offset: 10}}\n"
    )
    (tmp_path / "deploy.yml").write_text(DEPLOY + hosts)
    run = subprocess.run(
        [sys.executable, "-m", "switchctl", "deploy", "--check", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SWITCHCTL_DEPLOY_CONFIG": str(tmp_path / "deploy.yml")},
    )
    assert run.returncode == 2, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert [(h["name"], h["ok"]) for h in report["hosts"]] == [("app1", False), ("app2", False)]
    first, second = report["problems"]
    assert first.startswith("hosts[0] (app1): cannot reach dockerd at ssh://deploy@127.0.0.1:1: ")
    assert "key-based ssh" in first
    assert second.startswith(f"hosts[1] (app2): cannot reach dockerd at unix://{tmp_path}/none")
