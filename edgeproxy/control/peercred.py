"""Who is on the other end of a unix socket: SO_PEERCRED (+ SO_PEERGROUPS) on Linux."""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from edgeproxy.config import Control

_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux ≥ 4.13; not exported by Python


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def peer_of(sock: socket.socket) -> Peer:
    """Credentials of the process that connected `sock` (as of connect())."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    groups: tuple[int, ...] = ()
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 256)
        groups = struct.unpack(f"{len(raw) // 4}I", raw)
    except OSError:
        pass  # older kernel or more than 256 groups: primary gid only
    return Peer(pid=pid, uid=uid, gid=gid, groups=groups)


def allowed(peer: Peer, control: Control) -> bool:
    """Root, our own uid, or a uid/gid (primary or supplementary) on the allowlist."""
    if peer.uid in (0, os.getuid()) or peer.uid in control.allow_uids:
        return True
    allow_gids = set(control.allow_gids)
    return peer.gid in allow_gids or not allow_gids.isdisjoint(peer.groups)
