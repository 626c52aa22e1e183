"""Users and groups for `switchctl setup`: the machine's, or a scratch root's files.

Against `/` (the real server) `SystemAccounts` reads the passwd/group databases
and creates with `groupadd`/`useradd`/`usermod`. Against any other root (a test,
a rehearsal) `FileAccounts` keeps the same records in ROOT/etc/passwd and
ROOT/etc/group and never touches the machine's: ids it hands out are numbers
that setup writes into files (ownership, edgeproxy's control.group) exactly as
it would on a server.
"""

from __future__ import annotations

import grp
import pwd
import subprocess
from pathlib import Path
from typing import Protocol


class Accounts(Protocol):
    where: str
    """Said in the plan: "the system's" or the scratch files."""

    def uid(self, user: str) -> int | None: ...
    def gid(self, group: str) -> int | None: ...
    def groups_of(self, user: str) -> set[str]: ...
    def create_group(self, group: str) -> int: ...
    def create_user(self, user: str, group: str) -> int: ...
    def add_to_group(self, user: str, group: str) -> None: ...


class SystemAccounts:
    where = "the system's users and groups"

    def uid(self, user: str) -> int | None:
        try:
            return pwd.getpwnam(user).pw_uid
        except KeyError:
            return None

    def gid(self, group: str) -> int | None:
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            return None

    def groups_of(self, user: str) -> set[str]:
        try:
            primary = pwd.getpwnam(user).pw_gid
        except KeyError:
            return set()
        out = {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
        out |= {g.gr_name for g in grp.getgrall() if g.gr_gid == primary}
        return out

    def _run(self, *argv: str) -> None:
        p = subprocess.run(argv, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise OSError(f"`{' '.join(argv)}` exited with {p.returncode}: {p.stderr.strip()}")

    def create_group(self, group: str) -> int:
        self._run("groupadd", "--system", group)
        gid = self.gid(group)
        assert gid is not None
        return gid

    def create_user(self, user: str, group: str) -> int:
        self._run("useradd", "--create-home", "--shell", "/bin/bash", "--gid", group, user)
        uid = self.uid(user)
        assert uid is not None
        return uid

    def add_to_group(self, user: str, group: str) -> None:
        self._run("usermod", "--append", "--groups", group, user)


class FileAccounts:
    """passwd/group records under a scratch root (ids from 2000 up)."""

    FIRST_ID = 2000

    def __init__(self, root: Path) -> None:
        self.passwd = root / "etc" / "passwd"
        self.group = root / "etc" / "group"
        self.where = f"{self.passwd} and {self.group} (a scratch root: not the system's)"

    @staticmethod
    def _rows(path: Path) -> list[list[str]]:
        if not path.exists():
            return []
        return [line.split(":") for line in path.read_text().splitlines() if line.count(":") >= 3]

    def _append(self, path: Path, row: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(":".join(row) + "\n")

    def _next_id(self, path: Path, column: int) -> int:
        used = {int(r[column]) for r in self._rows(path) if r[column].isdigit()}
        n = self.FIRST_ID
        while n in used:
            n += 1
        return n

    def uid(self, user: str) -> int | None:
        return next((int(r[2]) for r in self._rows(self.passwd) if r[0] == user), None)

    def gid(self, group: str) -> int | None:
        return next((int(r[2]) for r in self._rows(self.group) if r[0] == group), None)

    def groups_of(self, user: str) -> set[str]:
        rows = self._rows(self.passwd)
        primary = next((r[3] for r in rows if r[0] == user), None)
        out = set()
        for name, _, gid, members in self._rows(self.group):
            if gid == primary or user in members.split(","):
                out.add(name)
        return out

    def create_group(self, group: str) -> int:
        gid = self._next_id(self.group, 2)
        self._append(self.group, [group, "x", str(gid), ""])
        return gid

    def create_user(self, user: str, group: str) -> int:
        gid = self.gid(group)
        if gid is None:
            raise OSError(f"group {group} does not exist in {self.group}")
        uid = self._next_id(self.passwd, 2)
        self._append(self.passwd, [user, "x", str(uid), str(gid), "", f"/home/{user}", "/bin/bash"])
        return uid

    def add_to_group(self, user: str, group: str) -> None:
        rows = self._rows(self.group)
        for r in rows:
            if r[0] == group:
                members = [m for m in r[3].split(",") if m]
                if user not in members:
                    r[3] = ",".join([*members, user])
        self.group.write_text("".join(":".join(r) + "\n" for r in rows))


def accounts_for(root: Path) -> Accounts:
    return SystemAccounts() if root == Path("/") else FileAccounts(root)
