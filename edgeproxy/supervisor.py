"""Telling whoever started edgeproxy that it serves: systemd's notify socket, `--detach`'s pipe.

systemd (`Type=notify`, `NotifyAccess=all`): `READY=1` once the listeners
accept; a process that took over also sends `MAINPID=<its pid>`, so the unit
follows it and the old process's exit does not stop the service.

`edgeproxy serve --takeover --detach` (systemd's `ExecReload=`) starts the
real process in the background and waits for one line on a pipe whose
descriptor it passes in EDGEPROXY_READY_FD: `ok ...` once the new process
accepts, or why it could not.
"""

from __future__ import annotations

import contextlib
import os
import socket

READY_FD_ENV = "EDGEPROXY_READY_FD"


def sd_notify(message: str) -> bool:
    """Send `message` to systemd's notify socket; False when there is none."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.connect(address)
        s.sendall(message.encode())
        return True
    return False


def tell_parent(line: str) -> None:
    """The one line `--detach`'s parent waits for (once; later calls do nothing)."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None or not fd.isdigit():
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), line.rstrip("\n").encode() + b"\n")
    with contextlib.suppress(OSError):
        os.close(int(fd))


def serving(pid: int, handover_id: str | None) -> None:
    """The listeners accept: tell systemd and a waiting `--detach` parent."""
    if handover_id is None:
        sd_notify("READY=1")
        tell_parent(f"ok pid {pid} serves")
    else:
        sd_notify(f"MAINPID={pid}\nREADY=1")
        tell_parent(f"ok pid {pid} serves (hand-over {handover_id})")
