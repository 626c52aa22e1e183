"""Take over an existing certbot lineage's renewal (the cutover from nginx).

A lineage issued in the nginx days renews through nginx: its renewal config
(`CONFIG/renewal/NAME.conf`) names the nginx authenticator and installer, or a
webroot nginx served, and a hook that reloads nginx. Once edgeproxy owns port
80 those renewals would fail or reload nothing. `adopt_renewal` rewrites the
`[renewalparams]` section so the next `certbot renew` answers the challenge
from edgeproxy's webroot and installs with `certs install` as its deploy hook;
everything else (account, server, key type) stays. The old file is kept beside
it as `NAME.conf.pre-edgeproxy-<time>` (certbot only reads `*.conf`), which is
also the way back.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from certs.errors import CertsError

_DROP = {"authenticator", "installer", "webroot_path", "renew_hook", "pre_hook", "post_hook"}


def renewal_config(lineage: Path) -> Path:
    """certbot's renewal config for CONFIG/live/NAME: CONFIG/renewal/NAME.conf."""
    return lineage.parent.parent / "renewal" / f"{lineage.name}.conf"


def _key(line: str) -> str:
    return line.split("=", 1)[0].strip() if "=" in line else ""


def rewrite(text: str, webroot: Path, domains: list[str], hook: str) -> str:
    """The renewal config with webroot authentication at `webroot` and `hook` as deploy hook."""
    head: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            sections.append((stripped, []))
        elif sections:
            sections[-1][1].append(line)
        else:
            head.append(line)
    out = list(head)
    found = False
    for header, lines in sections:
        out.append(header)
        if header != "[renewalparams]":
            out += lines
            continue
        found = True
        in_sub = False
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("[["):
                in_sub = stripped == "[[webroot_map]]"
                if in_sub:
                    continue
            if in_sub or (not line.startswith(" ") and _key(line) in _DROP):
                continue
            out.append(line)
        while out and not out[-1].strip():
            out.pop()
        out += [
            "authenticator = webroot",
            f"webroot_path = {webroot},",
            f"renew_hook = {hook}",
            "[[webroot_map]]",
            *[f"{d} = {webroot}" for d in domains],
        ]
    if not found:
        raise CertsError("the renewal config has no [renewalparams] section")
    return "\n".join(out) + "\n"


def adopt_renewal(lineage: Path, webroot: Path, domains: list[str], hook: str) -> Path:
    """Rewrite the lineage's renewal config in place; return where the old one was kept."""
    conf = renewal_config(lineage)
    try:
        text = conf.read_text()
    except OSError as e:
        raise CertsError(
            f"{conf}: cannot read the lineage's renewal config ({e.strerror}); "
            "is --lineage a certbot live/NAME folder?"
        ) from e
    try:
        new = rewrite(text, webroot, domains, hook)
    except CertsError as e:
        raise CertsError(f"{conf}: {e}") from e
    kept = conf.with_name(f"{conf.name}.pre-edgeproxy-{time.strftime('%Y%m%dT%H%M%S')}")
    os.link(conf, kept)
    tmp = conf.with_name(f".{conf.name}.tmp")
    tmp.write_text(new)
    os.chmod(tmp, os.stat(conf).st_mode & 0o777)
    os.replace(tmp, conf)
    return kept
