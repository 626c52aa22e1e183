"""A scratch "fresh server" for `switchctl setup`: a root folder and a real dockerd.

`ScratchServer` writes what an operator brings to a new server (nothing else
exists under the root at first):

- the app's checkout (`app/deploy/deploy.yml`, `app/deploy/edgeproxy.yml`), the
  files docs/deploying.md asks for, for a busybox test app on 127.0.0.1 ports;
- the base stack's compose file (under ROOT/srv/stack): a "database" (busybox
  nc) and edgeproxy (the busybox image running this checkout with the host's
  Python, its folders bind-mounted from ROOT at the server paths), host network.

Everything in docker is named `f-setup-test-<id>-…` and labelled
`edgeproxy.test=<id>`; `teardown()` removes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml

from tests.docker_fixtures import APP, BUSYBOX, ROOT, TEST_LABEL, free_ports, python_mounts

REF = "3f2c1ab"
"""The git sha docs/deploying.md releases; the test image is tagged with it."""


class ScratchServer:
    def __init__(self, client: docker.DockerClient, tmp: Path) -> None:
        self.client = client
        self.id = uuid.uuid4().hex[:8]
        self.prefix = f"f-setup-test-{self.id}"
        self.root = tmp / "root"
        self.checkout = tmp / "app"
        self.app = f"shop{self.id}"
        self.http_port, self.https_port, self.db_port, blue, green = free_ports(5)
        self.ports = {"blue": blue, "green": green}
        self.image = f"{self.prefix}/shop"
        self.proxy_name = f"{self.prefix}-edgeproxy"
        self.db_name = f"{self.prefix}-db"
        self.root.mkdir(parents=True)
        (self.checkout / "deploy").mkdir(parents=True)
        self.compose_file = self.root / "srv" / "stack" / "docker-compose.yml"
        self.compose_file.parent.mkdir(parents=True)
        self.compose_file.write_text(yaml.safe_dump(self.compose()))
        (self.checkout / "deploy" / "deploy.yml").write_text(yaml.safe_dump(self.deploy_config()))
        (self.checkout / "deploy" / "edgeproxy.yml").write_text(self.edgeproxy_config())
        client.images.get(f"{APP}:good").tag(self.image, REF)

    def server(self, path: str) -> Path:
        """A server path (/etc/...) in this scratch root."""
        return self.root / path.lstrip("/")

    def labels(self) -> dict[str, str]:
        return {TEST_LABEL: self.id}

    def edgeproxy_config(self) -> str:
        cfg = {
            "listen": {
                "http": f"127.0.0.1:{self.http_port}",
                "https": f"127.0.0.1:{self.https_port}",
            },
            "control": {"socket": "/run/edgeproxy/control.sock", "mode": "0660"},
            "state_file": "/var/lib/edgeproxy/state.json",
            "acme": {"webroot": "/var/www/certbot"},
            "tls": {
                "certificates": [
                    {
                        "cert": f"/etc/edgeproxy/certs/{host}/fullchain.pem",
                        "key": f"/etc/edgeproxy/certs/{host}/privkey.pem",
                    }
                    for host in ("shop.test", "admin.shop.test")
                ]
            },
            "shutdown_grace": 1,
            "apps": {
                self.app: {
                    "colors": {
                        c: {"upstreams": [f"http://127.0.0.1:{p}"]} for c, p in self.ports.items()
                    },
                    "health": {"path": "/healthz", "interval": 0.2, "timeout": 2},
                    "drain_timeout": 3,
                }
            },
            "sites": [
                {
                    "hosts": [host],
                    "https_redirect": False,
                    "routes": [{"path": "/", "app": self.app}],
                }
                for host in ("shop.test", "admin.shop.test")
            ],
        }
        return "# the test app's edgeproxy.yml (comments are kept by setup)\n" + yaml.safe_dump(cfg)

    def deploy_config(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "image": f"{self.image}:{{ref}}",
            "pull": "missing",
            "env_file": f"/etc/{self.app}/app.env",
            "required_env": ["JWT_SECRET"],
            "container_name": f"{self.prefix}-{{role}}-{{color}}",
            "roles": {"server": {"traffic": True, "ports": self.ports, "health_path": "/healthz"}},
            "health": {"deadline": 20, "first_delay": 0.1, "max_delay": 0.5},
            "smoke": {
                "url": f"http://127.0.0.1:{self.http_port}",
                "checks": [{"path": "/", "host": "shop.test", "status": 200}],
            },
            "canary": {"steps": [50, 100], "dwell": 0.5, "poll": 0.2},
            "drain_timeout": 3,
            "stop_timeout": 2,
            "base_services": [self.db_name],
            "edgeproxy": {
                "container": self.proxy_name,
                "socket": "/run/edgeproxy/control.sock",
                "config": "/etc/edgeproxy/edgeproxy.yml",
                "config_source": f"/srv/{self.app}/config_source/edgeproxy.yml",
                "start_timeout": 30,
            },
            "state_dir": "/var/lib/switchctl",
            "extra_labels": self.labels(),
            "setup": {
                "user": "deploy",
                "group": "deploy",
                "compose_file": "/srv/stack/docker-compose.yml",
                "compose_project": self.prefix,
            },
        }

    def compose(self) -> dict[str, Any]:
        mounts = [f"{host}:{m['bind']}:{m['mode']}" for host, m in python_mounts().items()]
        folders = [
            ("/etc/edgeproxy", "ro"),
            ("/var/lib/edgeproxy", "rw"),
            ("/run/edgeproxy", "rw"),
            ("/var/www/certbot", "ro"),
        ]
        mounts += [f"{self.server(p)}:{p}:{mode}" for p, mode in folders]
        common = {"network_mode": "host", "init": True, "labels": self.labels()}
        return {
            "version": "2.4",
            "services": {
                "db": {
                    **common,
                    "image": BUSYBOX,
                    "container_name": self.db_name,
                    "command": ["nc", "-ll", "-p", str(self.db_port), "-e", "cat"],
                },
                "edgeproxy": {
                    **common,
                    "image": BUSYBOX,
                    "container_name": self.proxy_name,
                    "restart": "unless-stopped",
                    "volumes": mounts,
                    "working_dir": str(ROOT),
                    "environment": {"PYTHONPATH": str(ROOT)},
                    "command": [
                        str(Path(sys.prefix) / "bin" / "python"),
                        "-m",
                        "edgeproxy",
                        "serve",
                        "--config",
                        "/etc/edgeproxy/edgeproxy.yml",
                        "--log-format",
                        "text",
                    ],
                },
            },
        }

    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        return {
            **os.environ,
            "SWITCHCTL_ROOT": str(self.root),
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT),
        }

    def switchctl(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "switchctl", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.checkout,
            env=self.env(),
            check=False,
        )

    def containers(self) -> list[Any]:
        return list(
            self.client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={self.id}"})
        )

    def teardown(self) -> None:
        for c in self.containers():
            try:
                c.remove(force=True)
            except docker.errors.APIError:
                pass
        for net in self.client.networks.list(
            filters={"label": f"com.docker.compose.project={self.prefix}"}
        ):
            try:
                net.remove()
            except docker.errors.APIError:
                pass
        for img in self.client.images.list(name=self.image):
            for tag in img.tags:
                try:
                    self.client.images.remove(tag)
                except docker.errors.APIError:
                    pass
        for img in self.client.images.list(name=f"switchctl/{self.app}-release"):
            for tag in img.tags:
                try:
                    self.client.images.remove(tag)
                except docker.errors.APIError:
                    pass
