"""`switchctl deploy --adopt`: take over the color containers that run before switchctl did.

deploy.sh (or anything else) started `medusa-server-blue` without switchctl's
labels, and docker cannot add labels to an existing container. Adopting
records each container found by name (the deploy config's `container_name`
pattern, or `--adopt-pattern`) with its color and role in
STATE_DIR/APP/adopted.json; from then on `deploy`, `doctor` and the planner
treat it exactly like a labelled one: the color that runs is the active color,
the first deploy releases to the other one and stops the adopted containers
only after the new color serves everything.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from switchctl.deploy.config import DeployConfig
from switchctl.deploy.errors import DeployError
from switchctl.deploy.observe import LABEL_APP, adoption_file, load_adopted


@dataclass(frozen=True)
class AdoptedContainer:
    name: str
    color: str
    role: str
    state: str


def adopt(
    cfg: DeployConfig, client: docker.DockerClient, pattern: str | None = None
) -> list[AdoptedContainer]:
    """Record every unlabelled container named by `pattern` ({app}, {role}, {color})."""
    pattern = pattern or cfg.container_name
    records = load_adopted(cfg)
    for cid in list(records):
        try:
            client.containers.get(cid)
        except docker.errors.NotFound:
            del records[cid]  # removed since
    found = []
    for role in cfg.roles:
        for color in cfg.colors:
            name = pattern.format(app=cfg.app, role=role, color=color)
            try:
                c: Any = client.containers.get(name)
            except docker.errors.NotFound:
                continue
            if c.labels.get(LABEL_APP) == cfg.app:
                continue  # started by switchctl: already labelled
            records[c.id] = {"name": c.name, "color": color, "role": role}
            found.append(AdoptedContainer(c.name, color, role, c.status))
    if not found:
        names = ", ".join(
            pattern.format(app=cfg.app, role=r, color=c) for r in cfg.roles for c in cfg.colors
        )
        raise DeployError(
            "adopt",
            f"no container without switchctl's labels is named {names}",
            "give the names the old deploy used with --adopt-pattern, e.g. "
            "'medusa-{role}-{color}' ({app}, {role} and {color} are filled in)",
        )
    path = adoption_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return found
