"""One active health check: GET the check path, judge the status. aiohttp's client, off the hot path."""

from __future__ import annotations

import asyncio
import errno
import os

import aiohttp

from edgeproxy.config import Health

USER_AGENT = "edgeproxy-health/1"

LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""Errors of this machine, not of the upstream: a check that hits one says nothing about it."""


def local_errno(exc: BaseException) -> int | None:
    """The local error (EMFILE, ...) behind `exc`, looking through its causes; None if none."""
    seen: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; never loop on a cycle
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in LOCAL_ERRNOS:
            return seen.errno
        if isinstance(seen, aiohttp.ClientConnectorError):
            code = seen.os_error.errno
            if code in LOCAL_ERRNOS:
                return code
        seen = seen.__cause__ or seen.__context__
    return None


def new_session() -> aiohttp.ClientSession:
    # A fresh connection per probe: a pooled one would hide a listener that stopped accepting.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=0),
        auto_decompress=False,
        headers={"User-Agent": USER_AGENT},
    )


async def probe_now(urls: list[str], spec: Health) -> tuple[bool, list[str]]:
    """Check each upstream once now: (one passed?, what failed on the others).

    For a color the running checks do not cover yet (a config reload that
    brings it or changes its upstreams or checks).
    """
    if not spec.enabled:
        return True, []
    async with new_session() as session:
        results = await asyncio.gather(*(probe(session, u, spec) for u in urls))
    failing = [f"{u}: {detail}" for u, (ok, detail) in zip(urls, results, strict=True) if not ok]
    return any(ok for ok, _ in results), failing


async def probe(
    session: aiohttp.ClientSession, base_url: str, spec: Health
) -> tuple[bool | None, str]:
    """(passed?, what was seen) for one GET of `spec.path` on `base_url`.

    None instead of passed/failed when the check could not run because of a
    local error (edgeproxy out of file descriptors, buffers or memory).
    """
    lo, hi = spec.status_range()
    what = f"GET {spec.path}"
    headers = {"Host": spec.host} if spec.host else None
    try:
        async with (
            asyncio.timeout(spec.timeout),
            session.get(base_url + spec.path, headers=headers, allow_redirects=False) as resp,
        ):
            status = resp.status
    except TimeoutError:
        return False, f"{what}: no answer within {spec.timeout:g}s"
    except (aiohttp.ClientError, OSError) as e:
        code = local_errno(e)
        if code is not None:
            reason = os.strerror(code).lower()
            return None, f"{what}: local error {errno.errorcode[code]} ({reason})"
        if isinstance(e, aiohttp.ClientConnectorError):
            err = e.os_error
            reason = os.strerror(err.errno) if err.errno else str(err)
            return False, f"{what}: cannot connect ({reason.lower()})"
        return False, f"{what}: {type(e).__name__}: {e}"
    if lo <= status <= hi:
        return True, f"{what} → {status}"
    return False, f"{what} → {status} (expected {spec.expected_status})"
