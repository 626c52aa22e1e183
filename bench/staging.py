"""`python -m bench.staging` (`make staging`): a real Medusa v2 backend released by switchctl.

Not part of `make test`. Steps (each `python -m bench.staging STEP`; `all` runs them in order):

- `prepare`: PostgreSQL 15 (Debian `postgresql`) in its own cluster under `.staging/pg` on
  127.0.0.1:55432; a Medusa v2 project in `.staging/medusa` (npm, pinned 2.x) made from
  `bench/staging_app/`; `medusa db:migrate`; the seed (region, sales channel, publishable key
  linked to it, stock location, products; the key goes to `.staging/run/etc/medusa/app.env`);
  images `staging/medusa:v1|v2|v3` from one `docker import` of a rootfs with node, npm, the
  app and every shared library `ldd` lists (v3's environment breaks `/store/products`).
- `up`: edgeproxy's config and switchctl's deploy config from `compose/medusa/*.yml`, adapted
  only where this machine needs it (loopback ports, paths under `.staging/run`, a self-signed
  certificate, no Redis/Meilisearch/Portainer/Kuma, shorter canary dwell); the edgeproxy
  container started as compose starts it (host network, the same directories mounted,
  restart unless-stopped); then `switchctl deploy --ref v1`.
- `runs`: the storefront scenario direct vs through edgeproxy at the same offered rate, then
  releases v2 and v3 under it, then a reload + set/drain/rollback round under it.
- `down`: removes every container this created (names start with `staging-`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import click
import yaml

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".staging"
PROJECT = CACHE / "medusa"
RUN = CACHE / "run"
OUT = ROOT / "bench" / "out"
APP_SRC = ROOT / "bench" / "staging_app"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PORT = 55432
PG_SOCK = Path("/tmp/staging-pgsock")
DATABASE_URL = f"postgres://postgres@127.0.0.1:{PG_PORT}/medusa"
MEDUSA_VERSION = "2.21.2"
IMAGE = "staging/medusa"
BUSYBOX = "staging/busybox:1"
PROXY = "staging-edgeproxy"
HOST = "api.shop.example.com"
HTTP_PORT, HTTPS_PORT, METRICS_PORT = 18080, 18443, 19145
PORTS = {"server": {"blue": 19000, "green": 19002}, "worker": {"blue": 19001, "green": 19003}}
LABEL = "edgeproxy.staging"

PACKAGE_JSON = {
    "name": "staging-medusa",
    "version": "1.0.0",
    "private": True,
    "scripts": {"start": "medusa start"},
    "dependencies": {
        "@medusajs/medusa": MEDUSA_VERSION,
        "@medusajs/framework": MEDUSA_VERSION,
        "@medusajs/cli": MEDUSA_VERSION,
    },
    "devDependencies": {
        "@swc/core": "^1.7.28",
        "typescript": "^5.6.2",
        "ts-node": "^10.9.2",
        "@types/node": "^20.0.0",
    },
    "engines": {"node": ">=20"},
}


def log(msg: str) -> None:
    print(f"[staging {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*argv: str | Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("check", True)
    kw.setdefault("text", True)
    return subprocess.run([str(a) for a in argv], **kw)


# --- PostgreSQL ------------------------------------------------------------------------------


def postgres() -> None:
    if not (PG_BIN / "initdb").exists():
        log("installing Debian postgresql")
        sh("apt-get", "update", "-qq")
        sh("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq", "postgresql")
    data = CACHE / "pg" / "data"
    for d in (CACHE / "pg", PG_SOCK):
        d.mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "postgres")
    (CACHE / "pg").chmod(0o700)
    as_pg = ["su", "postgres", "-s", "/bin/sh", "-c"]
    if not (data / "PG_VERSION").exists():
        log(f"initdb {data}")
        sh(*as_pg, f"{PG_BIN}/initdb -D {data} -U postgres --auth=trust -E UTF8 >/dev/null")
    if sh(*as_pg, f"{PG_BIN}/pg_ctl -D {data} status >/dev/null", check=False).returncode:
        log(f"starting PostgreSQL on 127.0.0.1:{PG_PORT}")
        opts = f"-p {PG_PORT} -k {PG_SOCK} -c listen_addresses=127.0.0.1 -c max_connections=200"
        sh(*as_pg, f"{PG_BIN}/pg_ctl -D {data} -l {CACHE}/pg/server.log -o '{opts}' -w start")
    psql = ["psql", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres", "-tAc"]
    if (
        "1"
        not in sh(
            *psql, "select 1 from pg_database where datname='medusa'", capture_output=True
        ).stdout
    ):
        sh(*psql, "create database medusa")


# --- the Medusa project and its images -----------------------------------------------------


def app_env() -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": DATABASE_URL, "NODE_ENV": "production"}


def project() -> str:
    """npm install (when package.json changed), migrate, seed; returns the publishable key."""
    PROJECT.mkdir(parents=True, exist_ok=True)
    shutil.copytree(APP_SRC, PROJECT, dirs_exist_ok=True)
    pkg = json.dumps(PACKAGE_JSON, indent=2) + "\n"
    stamp = PROJECT / "node_modules" / ".staging-package.json"
    if not stamp.exists() or stamp.read_text() != pkg:
        (PROJECT / "package.json").write_text(pkg)
        log("npm install (Medusa v2 from the npm registry; about 2 minutes)")
        sh("npm", "install", "--no-audit", "--no-fund", "--loglevel=error", cwd=PROJECT)
        stamp.write_text(pkg)
    log("medusa db:migrate")
    sh("npx", "medusa", "db:migrate", cwd=PROJECT, env=app_env(), stdout=subprocess.DEVNULL)
    key_file = CACHE / "publishable-key.txt"
    log("seed")
    sh(
        "npx",
        "medusa",
        "exec",
        "./src/scripts/seed.ts",
        cwd=PROJECT,
        env={**app_env(), "STAGING_KEY_FILE": str(key_file)},
        stdout=subprocess.DEVNULL,
    )
    return key_file.read_text().strip()


def _is_elf(p: Path) -> bool:
    try:
        with p.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _libraries(elves: list[Path]) -> set[Path]:
    libs: set[Path] = set()
    for elf in elves:
        out = sh("ldd", elf, capture_output=True, check=False).stdout
        for line in out.splitlines():
            parts = line.split()
            for part in parts:
                if part.startswith("/"):
                    libs.add(Path(part))
    return libs


def _busybox_members(tar: tarfile.TarFile) -> None:
    def add_dir(name: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, mode
        tar.addfile(info)

    def add_link(name: str, target: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        tar.addfile(info)

    def add_text(name: str, text: str) -> None:
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, __import__("io").BytesIO(data))

    for d in ("bin", "etc", "usr", "usr/bin", "usr/lib", "usr/lib64", "root"):
        add_dir(d)
    # the host's merged /usr: /lib and /lib64 are links, so the loader's and ldd's paths hold
    add_link("lib", "usr/lib")
    add_link("lib64", "usr/lib64")
    add_dir("tmp", 0o1777)
    tar.add("/bin/busybox", "bin/busybox")
    applets = sh("/bin/busybox", "--list", capture_output=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            add_link(f"bin/{applet}", "busybox")
    add_link("usr/bin/env", "/bin/busybox")
    add_text("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    add_text("etc/group", "root:x:0:\nnogroup:x:65534:\n")
    add_text("etc/hosts", "127.0.0.1 localhost\n")
    add_text("etc/nsswitch.conf", "hosts: files dns\n")


def build_images(rebuild: bool = False) -> None:
    import docker

    client = docker.from_env()
    if not rebuild:
        try:
            client.images.get(f"{IMAGE}:base")
        except docker.errors.ImageNotFound:
            rebuild = True
    if rebuild:
        node = Path(shutil.which("node") or "/usr/bin/node").resolve()
        npm_dir = Path("/usr/lib/node_modules/npm")
        elves = [node]
        for dirpath, _dirs, files in os.walk(PROJECT / "node_modules"):
            for f in files:
                p = Path(dirpath) / f
                executable = f.endswith(".node") or os.access(p, os.X_OK)
                if executable and not p.is_symlink() and _is_elf(p):
                    elves.append(p)
        libs = _libraries(elves)
        log(f"rootfs: node, npm, the app, {len(elves)} ELF files, {len(libs)} shared libraries")
        rootfs = CACHE / "rootfs.tar"
        with tarfile.open(rootfs, "w") as tar:
            _busybox_members(tar)
            tar.add(node, "usr/bin/node")
            tar.add(npm_dir, "usr/lib/node_modules/npm")
            for cli in ("npm", "npx"):
                info = tarfile.TarInfo(f"usr/bin/{cli}")
                info.type = tarfile.SYMTYPE
                info.linkname = f"../lib/node_modules/npm/bin/{cli}-cli.js"
                tar.addfile(info)
            done: set[str] = set()
            for lib in sorted(libs):
                # the path ldd printed (maybe a symlink) and the file it points to
                # (directories resolved: the image has usr/lib, with lib -> usr/lib)
                for p in (lib.parent.resolve() / lib.name, lib.resolve()):
                    name = str(p).lstrip("/")
                    if name not in done and p.exists():
                        done.add(name)
                        tar.add(p, name, recursive=False)
            ca = Path("/etc/ssl/certs/ca-certificates.crt")
            if ca.exists():
                tar.add(ca, "etc/ssl/certs/ca-certificates.crt")
            tar.add(PROJECT, "app", filter=lambda ti: None if "/.medusa/" in ti.name else ti)
        log(f"docker import {rootfs.stat().st_size / 2**20:.0f} MiB as {IMAGE}:base")
        sh(
            "docker",
            "import",
            "--change",
            "WORKDIR /app",
            "--change",
            "ENV PATH=/usr/local/bin:/usr/bin:/bin NODE_ENV=production",
            "--change",
            'CMD ["npx", "medusa", "start"]',
            rootfs,
            f"{IMAGE}:base",
            stdout=subprocess.DEVNULL,
        )
        rootfs.unlink()
    for ref, extra in (("v1", ""), ("v2", ""), ("v3", " STAGING_BREAK=products")):
        dockerfile = f"FROM {IMAGE}:base\nENV STAGING_RELEASE={ref}{extra}\n"
        sh(
            "docker",
            "build",
            "-q",
            "-t",
            f"{IMAGE}:{ref}",
            "-",
            input=dockerfile,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
            stdout=subprocess.DEVNULL,
        )
    log(f"images {IMAGE}:v1, v2, v3 (v3: /store/products answers 500)")


# --- edgeproxy and switchctl configs ---------------------------------------------------------


def paths() -> dict[str, Path]:
    return {
        "etc": RUN / "etc" / "edgeproxy",
        "config": RUN / "etc" / "edgeproxy" / "edgeproxy.yml",
        "source": RUN / "srv" / "edgeproxy.yml",
        "certs": RUN / "etc" / "edgeproxy" / "certs",
        "state": RUN / "var" / "lib" / "edgeproxy",
        "run": RUN / "run" / "edgeproxy",
        "socket": RUN / "run" / "edgeproxy" / "control.sock",
        "webroot": RUN / "var" / "www" / "certbot",
        "switchctl": RUN / "var" / "lib" / "switchctl",
        "env": RUN / "etc" / "medusa" / "app.env",
        "deploy": RUN / "etc" / "switchctl" / "deploy.yml",
    }


def cert_file() -> Path:
    return paths()["certs"] / HOST / "fullchain.pem"


def edgeproxy_config() -> dict[str, Any]:
    """compose/medusa/edgeproxy.yml with this machine's ports and paths."""
    p = paths()
    cfg: dict[str, Any] = yaml.safe_load((ROOT / "compose/medusa/edgeproxy.yml").read_text())
    cfg["listen"] = {"http": f"127.0.0.1:{HTTP_PORT}", "https": f"127.0.0.1:{HTTPS_PORT}"}
    cfg["control"].update(
        mode=f"{cfg['control']['mode']:04o}",  # YAML read 0660 as a number; keep it octal
        socket=str(p["socket"]),
        group=0,
        allow_gids=[0],
        metrics_listen=f"127.0.0.1:{METRICS_PORT}",
    )
    cfg["state_file"] = str(p["state"] / "state.json")
    d = p["certs"] / HOST
    cfg["tls"]["certificates"] = [{"cert": str(d / "fullchain.pem"), "key": str(d / "privkey.pem")}]
    cfg["acme"]["webroot"] = str(p["webroot"])
    app = cfg["apps"]["medusa"]
    for color in ("blue", "green"):
        app["colors"][color]["upstreams"] = [f"http://127.0.0.1:{PORTS['server'][color]}"]
    # The storefront figures count the color that served each request.
    app["expose_color"] = True
    site = cfg["sites"][0]
    # The load generator plays the Next.js storefront server on this host (all its shoppers
    # come from 127.0.0.1): the shipped comment says to exempt exactly that server.
    site["rate_limit"]["exempt"] = ["127.0.0.1/32"]
    site["routes"] = [r for r in site["routes"] if r["path"] != "/search/"]  # no Meilisearch here
    cfg["sites"] = [site]  # no Portainer / Uptime Kuma here
    return cfg


def deploy_config() -> dict[str, Any]:
    """compose/medusa/deploy.yml with local images, this machine's ports and paths."""
    p = paths()
    cfg: dict[str, Any] = yaml.safe_load((ROOT / "compose/medusa/deploy.yml").read_text())
    cfg["image"] = f"{IMAGE}:{{ref}}"
    cfg["pull"] = "never"
    cfg["container_name"] = "staging-{app}-{role}-{color}"
    cfg["env_file"] = str(p["env"])
    cfg["required_env"] = [v for v in cfg["required_env"] if not v.startswith(("REDIS", "MEILI"))]
    for role in ("server", "worker"):
        cfg["roles"][role]["ports"] = PORTS[role]
    cfg["smoke"]["url"] = f"https://127.0.0.1:{HTTPS_PORT}"
    # Shorter steps than the shipped 60 s so a run fits in minutes; gates unchanged but the
    # request floor, which 20 shoppers reach in ~20 s at 10 %.
    cfg["canary"].update(dwell=20, max_dwell=120)
    cfg["canary"]["gates"]["min_requests"] = 20
    del cfg["hooks"]["post_deploy"]  # no storefront build hook here
    cfg.pop("notify", None)
    cfg["base_services"] = []  # PostgreSQL runs on the host (.staging/pg)
    cfg["edgeproxy"] = {
        "container": PROXY,
        "socket": str(p["socket"]),
        "config": str(p["config"]),
        "config_source": str(p["source"]),
        "start_timeout": 60,
    }
    cfg["state_dir"] = str(p["switchctl"])
    cfg["extra_labels"] = {LABEL: "1"}
    cfg.pop("setup", None)
    return cfg


def write_configs(key: str) -> None:
    from bench.tlscert import make_selfsigned

    p = paths()
    for k in ("etc", "state", "run", "webroot", "switchctl"):
        p[k].mkdir(parents=True, exist_ok=True)
    for f in (p["env"], p["deploy"], p["source"]):
        f.parent.mkdir(parents=True, exist_ok=True)
    d = p["certs"] / HOST
    if not (d / "fullchain.pem").exists():
        d.mkdir(parents=True, exist_ok=True)
        files = make_selfsigned(d, (HOST,))
        files.cert.rename(d / "fullchain.pem")
        files.key.rename(d / "privkey.pem")
        files.combined.unlink()
    text = "# generated by bench/staging.py from compose/medusa/edgeproxy.yml\n"
    text += yaml.safe_dump(edgeproxy_config(), sort_keys=False)
    p["config"].write_text(text)
    p["source"].write_text(text)
    env = {
        "DATABASE_URL": DATABASE_URL,
        "JWT_SECRET": "staging-jwt-secret",
        "COOKIE_SECRET": "staging-cookie-secret",
        "STORE_CORS": "https://shop.example.com",
        "ADMIN_CORS": "https://shop.example.com",
        "AUTH_CORS": "https://shop.example.com",
        "MEDUSA_PUBLISHABLE_KEY": key,
    }
    p["env"].write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    p["env"].chmod(0o600)
    p["deploy"].write_text(yaml.safe_dump(deploy_config(), sort_keys=False))


def python_mounts() -> dict[str, dict[str, str]]:
    """The host's Python and this checkout, for the busybox image (as tests/docker_fixtures)."""
    mounts = {"/usr": {"bind": "/usr", "mode": "ro"}, "/usr/lib": {"bind": "/lib", "mode": "ro"}}
    if Path("/usr/lib64").is_dir():
        mounts["/usr/lib64"] = {"bind": "/lib64", "mode": "ro"}
    for q in (Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), ROOT):
        if not str(q).startswith("/usr/"):
            mounts[str(q)] = {"bind": str(q), "mode": "ro"}
    return mounts


def start_edgeproxy() -> None:
    """The compose service `edgeproxy`: host network, restart unless-stopped, root, the four
    directories mounted at their host paths. The image is the busybox one with the host's
    Python and this checkout mounted: compose/Dockerfile needs python:3.12-slim from a
    registry, which this machine cannot reach."""
    import docker

    client = docker.from_env()
    try:
        client.images.get(BUSYBOX)
    except docker.errors.ImageNotFound:
        from tests.docker_fixtures import _busybox_rootfs

        client.api.import_image_from_data(
            _busybox_rootfs(), repository=BUSYBOX.split(":")[0], tag=BUSYBOX.split(":")[1]
        )
    p = paths()
    volumes = {
        **python_mounts(),
        str(p["etc"]): {"bind": str(p["etc"]), "mode": "ro"},
        str(p["state"]): {"bind": str(p["state"]), "mode": "rw"},
        str(p["run"]): {"bind": str(p["run"]), "mode": "rw"},
        str(p["webroot"]): {"bind": str(p["webroot"]), "mode": "ro"},
    }
    client.containers.run(
        BUSYBOX,
        [
            str(Path(sys.prefix) / "bin" / "python"),
            "-m",
            "edgeproxy",
            "serve",
            "--config",
            str(p["config"]),
        ],
        name=PROXY,
        detach=True,
        network_mode="host",
        init=True,
        user="0:0",
        labels={LABEL: "1"},
        volumes=volumes,
        working_dir=str(ROOT),
        environment={"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        restart_policy={"Name": "unless-stopped"},
        log_config={"type": "json-file", "config": {"max-size": "10m", "max-file": "5"}},
        stop_signal="SIGTERM",
    )
    end = time.monotonic() + 30
    while not p["socket"].exists():
        if time.monotonic() > end:
            raise SystemExit("edgeproxy's control socket did not appear in 30 s")
        time.sleep(0.2)


def down() -> None:
    import docker

    client = docker.from_env()
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
        if c.name.startswith("staging-"):
            log(f"removing {c.name}")
            c.remove(force=True)


def switchctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh(
        sys.executable,
        "-m",
        "switchctl",
        *args,
        cwd=ROOT,
        check=check,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def ctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """switchctl against the staging socket, output captured."""
    return sh(
        sys.executable,
        "-m",
        "switchctl",
        "--socket",
        str(paths()["socket"]),
        *args,
        cwd=ROOT,
        check=check,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def deploy_cmd(ref: str) -> str:
    return f"{sys.executable} -m switchctl deploy -c {paths()['deploy']} --ref {ref} --json"


def up(key: str) -> None:
    down()
    # A fresh server each run: no state file, no release history.
    for k in ("state", "switchctl", "run"):
        shutil.rmtree(paths()[k], ignore_errors=True)
    write_configs(key)
    start_edgeproxy()
    log("switchctl deploy --ref v1 (first release: held until smoke-tested)")
    switchctl("deploy", "-c", str(paths()["deploy"]), "--ref", "v1")


# --- the runs under the storefront scenario ------------------------------------------------

CA = "$CA"


def storefront_argv(name: str, url: str, shoppers: int, think: float, **extra: str) -> list[str]:
    argv = ["python", "-m", "bench", "storefront", "--url", url]
    if url.startswith("https"):
        argv += ["--host", HOST, "--ca-file", CA]
    argv += ["--shoppers", str(shoppers), "--think", str(think)]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}", v]
    return [*argv, "--json", f"bench/out/staging-{name}.json"]


def storefront(name: str, argv: list[str]) -> dict[str, Any]:
    """Run one `python -m bench storefront` (key from the env), return its JSON document."""
    shown = " ".join(a if " " not in a else repr(a) for a in argv)
    log(f"{name}: MEDUSA_PUBLISHABLE_KEY=... {shown}")
    real = [sys.executable, *argv[1:]]
    real = [str(cert_file()) if a == CA else a for a in real]
    real = [a.replace("python -m ", f"{sys.executable} -m ") for a in real]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEDUSA_PUBLISHABLE_KEY": key()}
    proc = sh(*real, cwd=ROOT, env=env, capture_output=True, check=False)
    sys.stderr.write(proc.stdout)
    doc: dict[str, Any] = json.loads((ROOT / argv[-1]).read_text())
    doc["staging_command"] = shown
    return doc


def key() -> str:
    return (CACHE / "publishable-key.txt").read_text().strip()


def status() -> dict[str, Any]:
    out = ctl("--json", "status", check=False).stdout
    doc: dict[str, Any] = json.loads(out) if out.strip() else {}
    return doc


def active_color() -> str:
    out = ctl("--json", "status").stdout
    doc = json.loads(out)
    app = doc["medusa"]
    return str(app["active"])


def start_color_like(color: str, model: str) -> None:
    """Run `color`'s containers from the image and settings of `model`'s (a second copy of the
    live release), as an operator would to have a standby for the set/drain/rollback round."""
    import docker

    client = docker.from_env()
    for role in ("server", "worker"):
        src = client.containers.get(f"staging-medusa-{role}-{model}")
        name = f"staging-medusa-{role}-{color}"
        try:
            client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        env = [
            f"PORT={PORTS[role][color]}" if e.startswith("PORT=") else e.replace(model, color)
            for e in src.attrs["Config"]["Env"]
        ]
        labels = {k: v.replace(model, color) for k, v in src.labels.items()}
        client.containers.run(
            src.image.id,
            src.attrs["Config"]["Cmd"],
            name=name,
            detach=True,
            network_mode="host",
            init=True,
            environment=env,
            labels=labels,
            restart_policy={"Name": "unless-stopped"},
        )
    end = time.monotonic() + 120
    while time.monotonic() < end:
        h = ctl("--json", "health", check=False).stdout
        if h and f'"{color}"' in h and _healthy(json.loads(h), color):
            return
        time.sleep(1)
    raise SystemExit(f"{color} did not become healthy in 120 s")


def _healthy(doc: Any, color: str) -> bool:
    """True when the health document says `color` is healthy (any nesting)."""
    if isinstance(doc, dict):
        if doc.get("color") == color and "healthy" in doc:
            return bool(doc["healthy"])
        if color in doc and isinstance(doc[color], dict) and "healthy" in doc[color]:
            return bool(doc[color]["healthy"])
        return any(_healthy(v, color) for v in doc.values())
    if isinstance(doc, list):
        return any(_healthy(v, color) for v in doc)
    return False


ROUND_WAIT = 15.0
# Release runs: 40 shoppers with a 6 s mean think time offer about 6 req/s, 60 % of one Medusa
# instance on this machine, leaving CPU for the new color's boot beside the live one. (20
# shoppers at 2 s offered ~10 req/s: three line-item POSTs to the live color timed out at 10 s
# while the new color booted.) Each shopper keys its canary bucket (X-Shopper-Id): with 20,
# none fell in the first 10 %, so that step saw no visitor of the new color.
SHOPPERS, THINK = 40, 6.0


def round_events(standby: str, live: str) -> None:
    """The --deploy command of the round: reload, set 10, set 100, drain the old, rollback; one JSON
    line per action (step_start kinds chosen so bench storefront names the phases). (`drain`
    of a candidate at 10 % is refused: "set its weight to 0 first"; a drain is for the old
    active color.)"""
    actions: list[tuple[str, str, list[str]]] = [
        ("reload", "config reload", ["config", "reload"]),
        ("canary", f"{standby} at 10% (set --weight 10)", ["set", standby, "--weight", "10"]),
        ("promote", f"set {standby}", ["set", standby]),
        ("drain_old", f"drain {live}", ["drain", live]),
        ("rollback", f"rollback (to {live})", ["rollback"]),
    ]
    for kind, step, argv in actions:
        r = ctl(*argv, check=False)
        print(
            json.dumps(
                {
                    "event": "step_start",
                    "kind": kind,
                    "step": step,
                    "exit": r.returncode,
                    "output": (r.stdout + r.stderr).strip()[-300:],
                }
            ),
            flush=True,
        )
        time.sleep(ROUND_WAIT)
    print(json.dumps({"event": "done", "kind": "round"}), flush=True)


def runs() -> list[dict[str, Any]]:
    docs = []
    # Direct (the blue server on its port, HTTP) vs through edgeproxy (HTTPS, as a visitor)
    # at the same offered load, alternating, twice.
    for i in (1, 2):
        for where, url in (
            ("direct", f"http://127.0.0.1:{PORTS['server']['blue']}"),
            ("edgeproxy", f"https://127.0.0.1:{HTTPS_PORT}"),
        ):
            argv = storefront_argv(f"{where}-{i}", url, 10, 3.0, duration="30")
            docs.append({"run": f"{where} {i}", **storefront(f"{where}-{i}", argv)})
    url = f"https://127.0.0.1:{HTTPS_PORT}"
    for ref in ("v2", "v3"):
        cmd = deploy_cmd(ref).replace(sys.executable, "python")
        argv = storefront_argv(f"release-{ref}", url, SHOPPERS, THINK, deploy=cmd)
        docs.append({"run": f"release {ref}", **storefront(f"release-{ref}", argv)})
    live = active_color()
    standby = "blue" if live == "green" else "green"
    log(f"round: starting {standby} as a copy of {live} (the live release)")
    start_color_like(standby, live)
    cmd = f"python -m bench.staging round --standby {standby} --live {live}"
    argv = storefront_argv("round", url, SHOPPERS, THINK, deploy=cmd)
    docs.append({"run": "reload + set/drain/rollback round", **storefront("round", argv)})
    (OUT / "staging-runs.json").write_text(json.dumps(docs, default=str))
    return docs


def _pooled(docs: list[dict[str, Any]], step: str | None = None) -> tuple[int, int, list[float]]:
    """(requests, failed, latencies of the successes) over runs, for one step or all."""
    n = failed = 0
    lat: list[float] = []
    for d in docs:
        r = d["records"]
        for i in range(len(r["t"])):
            if step is not None and r["step"][i] != step:
                continue
            n += 1
            if r["error"][i]:
                failed += 1
            else:
                lat.append(r["latency_ms"][i])
    return n, failed, lat


def compare_markdown(docs: list[dict[str, Any]]) -> list[str]:
    """Direct vs through edgeproxy: each run, then pooled over the runs, per step."""
    from bench.stats import percentile

    if not docs:
        return []
    lines = [
        "### Direct vs through edgeproxy at the same offered load",
        "",
        "Direct: HTTP to the blue server's port. Through edgeproxy: HTTPS as a visitor "
        "(20 % of shoppers open a new TLS connection per request). 10 shoppers, think 3 s "
        "(about 4 req/s, below one Medusa instance's ~10 req/s), 30 s per run, alternating.",
        "",
        "| run | requests | failed | failures | p50 ms | p99 ms |",
        "|---|--:|--:|---|--:|--:|",
    ]
    for d in docs:
        t = d["summary"][-1]
        causes = ", ".join(f"{k} {v}" for k, v in t["causes"].items()) or "-"
        lines.append(
            f"| {d['run']} | {t['requests']} | {t['failed']} | {causes} "
            f"| {t['p50_ms']:.1f} | {t['p99_ms']:.1f} |"
        )
    direct = [d for d in docs if d["run"].startswith("direct")]
    proxy = [d for d in docs if d["run"].startswith("edgeproxy")]
    lines += [
        "",
        "Pooled over the runs, by step:",
        "",
        "| step | direct n | direct failed | direct p50 | direct p99 | edgeproxy n "
        "| edgeproxy failed | edgeproxy p50 | edgeproxy p99 | p99 ratio |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for step in (None, "regions", "products", "cart", "line_item", "get_cart"):
        dn, df, dl = _pooled(direct, step)
        pn, pf, pl = _pooled(proxy, step)
        if not dl or not pl:
            continue
        d50, d99 = percentile(dl, 50), percentile(dl, 99)
        p50, p99 = percentile(pl, 50), percentile(pl, 99)
        lines.append(
            f"| {step or 'all'} | {dn} | {df} | {d50:.1f} | {d99:.1f} | {pn} | {pf} "
            f"| {p50:.1f} | {p99:.1f} | {p99 / d99:.2f} |"
        )
    return [*lines, ""]


def results_markdown(docs: list[dict[str, Any]]) -> str:
    from bench import storefront as sf

    rev = sh("git", "rev-parse", "--short", "HEAD", cwd=ROOT, capture_output=True).stdout.strip()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"## Staging with the real Medusa app: `make staging` ({when}, `{rev}`)",
        "",
        f"Medusa {MEDUSA_VERSION} from npm in local images (`docker import`), PostgreSQL 15 on "
        "the host, edgeproxy in its container (host network, the compose service's settings; "
        "busybox image with the host's Python: no base-image registry here), released by "
        "`switchctl deploy` with compose/medusa/{deploy,edgeproxy}.yml adapted by "
        "`bench/staging.py` (loopback ports, self-signed certificate, canary dwell 20 s and "
        "min_requests 20 instead of 60/60, the load generator's 127.0.0.1 exempt from the "
        "rate limit as the storefront server, expose_color on). Commands below run with "
        "`MEDUSA_PUBLISHABLE_KEY` from the seed and `CA` = the self-signed certificate.",
        "",
    ]
    lines += compare_markdown([d for d in docs if d["run"].startswith(("direct", "edgeproxy"))])
    for d in docs:
        lines += [f"### {d['run']}", "", "```sh", d["staging_command"], "```", ""]
        lines.append(sf.markdown(d))
        if "deploy" in d:
            outcomes = [e for e in d.get("events", []) if e.get("event") in ("done", "result")]
            if outcomes:
                lines += [f"last event: `{json.dumps(outcomes[-1])[:300]}`", ""]
    return "\n".join(lines) + "\n"


@click.group()
def main() -> None:
    """A staging run with the real Medusa app (see the module docstring)."""


@main.command("prepare")
@click.option("--rebuild", is_flag=True, help="rebuild the base image")
def prepare_cmd(rebuild: bool) -> None:
    postgres()
    project()
    build_images(rebuild)


@main.command("up")
def up_cmd() -> None:
    up((CACHE / "publishable-key.txt").read_text().strip())


@main.command("runs")
@click.option("--results/--no-results", default=True, help="append to bench/RESULTS.md")
def runs_cmd(results: bool) -> None:
    docs = runs()
    md = results_markdown(docs)
    (OUT / "staging-results.md").write_text(md)
    click.echo(md)
    if results:
        with (ROOT / "bench" / "RESULTS.md").open("a") as f:
            f.write("\n" + md)


@main.command("report")
@click.option("--results/--no-results", default=False, help="append to bench/RESULTS.md")
def report_cmd(results: bool) -> None:
    """The Markdown of the last `runs` again (from bench/out/staging-runs.json)."""
    md = results_markdown(json.loads((OUT / "staging-runs.json").read_text()))
    (OUT / "staging-results.md").write_text(md)
    click.echo(md)
    if results:
        with (ROOT / "bench" / "RESULTS.md").open("a") as f:
            f.write("\n" + md)


@main.command("round")
@click.option("--standby", required=True)
@click.option("--live", required=True)
def round_cmd(standby: str, live: str) -> None:
    round_events(standby, live)


@main.command("all")
@click.option("--rebuild", is_flag=True, help="rebuild the base image")
@click.pass_context
def all_cmd(ctx: click.Context, rebuild: bool) -> None:
    """prepare, up, runs (results appended to bench/RESULTS.md), down."""
    postgres()
    k = project()
    build_images(rebuild)
    up(k)
    try:
        ctx.invoke(runs_cmd, results=True)
    finally:
        down()


@main.command("down")
def down_cmd() -> None:
    down()


if __name__ == "__main__":
    main()
