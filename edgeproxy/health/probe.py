"""One active health check: GET the check path, judge the status. aiohttp's client, off the hot path."""

from __future__ import annotations

import asyncio
import os

import aiohttp

from edgeproxy.config import Health

USER_AGENT = "edgeproxy-health/1"


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


async def probe(session: aiohttp.ClientSession, base_url: str, spec: Health) -> tuple[bool, str]:
    """(passed?, what was seen) for one GET of `spec.path` on `base_url`."""
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
    except aiohttp.ClientConnectorError as e:
        err = e.os_error
        reason = os.strerror(err.errno) if err.errno else str(err)
        return False, f"{what}: cannot connect ({reason.lower()})"
    except (aiohttp.ClientError, OSError) as e:
        return False, f"{what}: {type(e).__name__}: {e}"
    if lo <= status <= hi:
        return True, f"{what} → {status}"
    return False, f"{what} → {status} (expected {spec.expected_status})"
