"""The access log: one JSON line per request with its fields, to a file or stdout."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.app import Observability, build_server
from edgeproxy.config import Config
from edgeproxy.errors import StartupError
from edgeproxy.observability.access_log import jbytes, jstr
from tests.proxy_fixtures import Edge, http_get

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def _flush(e: Edge) -> None:
    obs = next(p for p in e.server.plugins if isinstance(p, Observability))
    if obs.access_log is not None:
        obs.access_log.flush()


def lines(e: Edge, path: Path) -> list[dict[str, Any]]:
    e.run(_flush(e))
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def config(log: dict[str, Any], *routes: dict[str, Any], upstream: str) -> dict[str, Any]:
    return {
        "access_log": log,
        "apps": {"shop": {"colors": {"blue": {"upstreams": [upstream]}}}},
        "sites": [
            {
                "hosts": ["a.test"],
                "https_redirect": False,
                "routes": [{"path": "/", "app": "shop"}, *routes],
            }
        ],
    }


def test_each_request_writes_one_json_line_with_every_field(backend, edge, tmp_path):
    blue = backend("blue")
    log = tmp_path / "access.log"
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    e = edge(config({"path": str(log)}, {"path": "/dead", "upstream": dead_url}, upstream=blue.url))
    body = b"x" * 1234
    r = http_get(
        e.http_port, "/echo?secret=1", method="POST", body=body, **{"X-Request-ID": "rq-1"}
    )
    assert r.status == 200
    assert http_get(e.http_port, "/dead").status == 502
    assert http_get(e.http_port, '/q"x', host="unknown.test").status == 404
    first, second, third = lines(e, log)
    duration = first.pop("duration_ms")
    assert TIME.match(first.pop("time"))
    assert 0 <= duration < 10_000
    assert first == {
        "request_id": "rq-1",
        "client": "127.0.0.1",
        "host": "a.test",
        "method": "POST",
        "path": "/echo",
        "status": 200,
        "bytes_in": 1234,
        "bytes_out": 1234,
        "app": "shop",
        "color": "blue",
        "upstream": blue.url,
        "tls": None,
        "proto": "http/1.1",
        "error": None,
    }
    assert (second["path"], second["status"], second["upstream"]) == ("/dead", 502, dead_url)
    assert second["app"] is None and second["error"].startswith("connect failed: ")
    assert second["request_id"] != ""
    assert (third["host"], third["path"], third["status"]) == ("unknown.test", '/q"x', 404)


def test_a_sample_of_zero_writes_no_line_and_a_disabled_log_creates_no_file(
    backend, edge, tmp_path
):
    blue = backend("blue")
    sampled, disabled = tmp_path / "sampled.log", tmp_path / "disabled.log"
    e1 = edge(config({"path": str(sampled), "sample": 0}, upstream=blue.url))
    e2 = edge(config({"path": str(disabled), "enabled": False}, upstream=blue.url))
    for _ in range(20):
        assert http_get(e1.http_port).status == 200
        assert http_get(e2.http_port).status == 200
    assert sampled.exists() and lines(e1, sampled) == []
    assert lines(e2, disabled) == [] and not disabled.exists()


def test_the_default_destination_is_stdout(backend, edge, capfd):
    blue = backend("blue")
    e = edge(config({"path": "-"}, upstream=blue.url))
    http_get(e.http_port, "/to-stdout")
    e.run(_flush(e))
    out = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    assert [(x["path"], x["status"]) for x in out] == [("/to-stdout", 200)]


@given(st.text())
def test_any_string_is_written_as_valid_json(value: str) -> None:
    assert json.loads(jstr(value)) == value


@given(st.binary())
def test_any_request_bytes_are_written_as_valid_json(value: bytes) -> None:
    assert json.loads(jbytes(value)) == value.decode("utf-8", "backslashreplace")


def test_an_access_log_that_cannot_be_opened_stops_the_start_with_a_message(tmp_path):
    config = Config.model_validate(
        {
            "listen": {"http": "127.0.0.1:0"},
            "control": {"socket": str(tmp_path / "ctl.sock")},
            "state_file": str(tmp_path / "state.json"),
            "access_log": {"path": str(tmp_path / "missing-dir" / "access.log")},
        }
    )
    server = build_server(config)

    async def start() -> None:
        await server.start()

    with pytest.raises(StartupError, match=r"access_log\.path: cannot open .*missing-dir"):
        asyncio.run(start())
    assert not (tmp_path / "ctl.sock").exists()
