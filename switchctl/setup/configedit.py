"""Put the deploy group's numeric gid into edgeproxy.yml's `control` block, keeping comments.

A group *name* may exist on the host and not inside edgeproxy's container (or
with another number there); a number means the same group in both places. The
gid goes into `control.group` (the socket's group) and `control.allow_gids`
(members may use the socket). The edit is textual so the operator's comments
stay; the result is parsed back and compared, and only when the text has a
shape this edit does not handle is the file rewritten from its parsed form.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_TOP = re.compile(r"^control:\s*(#.*)?$")
_KEY = re.compile(r"^(?P<indent>[ \t]+)(?P<key>[A-Za-z_]+):(?P<rest>.*)$")


def _wanted(data: Any, gid: int) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("control"), dict):
        return False
    control = data["control"]
    gids = control.get("allow_gids") or []
    return str(control.get("group")) == str(gid) and isinstance(gids, list) and gid in gids


def set_control_group(text: str, gid: int) -> str:
    """`text` with control.group = "GID" and GID in control.allow_gids (unchanged when so)."""
    data = yaml.safe_load(text) or {}
    if _wanted(data, gid):
        return text
    edited = _edit(text, gid, data)
    if edited is not None and _wanted(yaml.safe_load(edited), gid):
        return edited
    control = data.setdefault("control", {})
    control["group"] = str(gid)
    control["allow_gids"] = sorted({*(control.get("allow_gids") or []), gid})
    return str(yaml.safe_dump(data, sort_keys=False))


def _edit(text: str, gid: int, data: dict[str, Any]) -> str | None:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start = next((i for i, line in enumerate(lines) if _TOP.match(line.rstrip("\n"))), None)
    control = data.get("control")
    gids = sorted({*((control or {}).get("allow_gids") or []), gid})
    if start is None:
        if "control" in data:
            return None  # e.g. `control: {socket: ...}` on one line
        return "".join(lines) + f'\ncontrol:\n  group: "{gid}"\n  allow_gids: {gids}\n'
    end, indent = start + 1, None
    while end < len(lines):
        line = lines[end]
        if line.strip() and not line[0].isspace() and not line.startswith("#"):
            break
        m = _KEY.match(line.rstrip("\n"))
        if m and indent is None:
            indent = m["indent"]
        end += 1
    indent = indent or "  "
    wanted = {"group": f'"{gid}"', "allow_gids": str(gids)}
    for i in range(start + 1, end):
        m = _KEY.match(lines[i].rstrip("\n"))
        if m and m["indent"] == indent and m["key"] in wanted:
            if m["key"] == "allow_gids" and not m["rest"].strip().startswith("["):
                return None  # a block list: leave it to the parsed rewrite
            lines[i] = f"{indent}{m['key']}: {wanted.pop(m['key'])}\n"
    insert = [f"{indent}{key}: {value}\n" for key, value in wanted.items()]
    lines[start + 1 : start + 1] = insert
    return "".join(lines)
