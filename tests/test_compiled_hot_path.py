"""The mypyc-compiled hot path: built from the current sources, or refused."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeproxy import compiled
from edgeproxy.app import build_server
from edgeproxy.config import Config
from edgeproxy.errors import StartupError

SO = "/x/edgeproxy/proxy/client.cpython-311-x86_64-linux-gnu.so"
PY = "/x/edgeproxy/proxy/client.py"

built = pytest.mark.skipif(
    not compiled.state().compiled, reason="the hot path is not compiled here (make PURE=1)"
)


def hashes(**by_module: str) -> dict[str, str]:
    return {f"edgeproxy.proxy.{m}": h for m, h in by_module.items()}


def test_a_compiled_module_built_from_its_current_source_is_not_stale() -> None:
    st = compiled.classify({"edgeproxy.proxy.client": SO}, hashes(client="abc"), lambda m: "abc")
    assert st.compiled == ["edgeproxy.proxy.client"]
    assert st.stale == []
    assert st.summary == "hot path compiled with mypyc (1 modules)"


def test_a_compiled_module_whose_source_changed_after_the_build_is_stale() -> None:
    st = compiled.classify({"edgeproxy.proxy.client": SO}, hashes(client="abc"), lambda m: "edited")
    assert st.stale == ["edgeproxy.proxy.client"]
    assert "make compile" in st.summary


def test_a_compiled_module_with_no_build_record_is_stale() -> None:
    st = compiled.classify({"edgeproxy.proxy.client": SO}, {}, lambda m: "abc")
    assert st.stale == ["edgeproxy.proxy.client"]


def test_modules_importing_from_source_are_python_and_never_stale() -> None:
    st = compiled.classify(
        {"edgeproxy.proxy.client": PY, "edgeproxy.proxy.exchange": SO},
        hashes(exchange="abc"),
        lambda m: "abc",
    )
    assert st.python == ["edgeproxy.proxy.client"]
    assert st.stale == []
    assert st.summary == "hot path partly compiled: edgeproxy.proxy.client run as Python"


def test_the_state_command_prints_json_naming_every_hot_path_module() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgeproxy.compiled", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    st = json.loads(out.stdout)
    assert sorted(st["compiled"] + st["python"]) == sorted(compiled.HOT_PATH)
    assert st["stale"] == []


@pytest.mark.skipif(
    os.environ.get("EDGEPROXY_EXPECT_COMPILED") != "1",
    reason="set by `make test` when it compiled the hot path",
)
def test_the_suite_runs_the_compiled_hot_path_that_make_built() -> None:
    for name in compiled.HOT_PATH:
        module = importlib.import_module(name)
        assert module.__file__ is not None and module.__file__.endswith(".so"), name
    assert compiled.state().stale == []


@built
def test_a_server_refuses_to_start_on_a_stale_compiled_hot_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "hotpath-build.json"
    record = json.loads(compiled.MANIFEST.read_text())
    record["edgeproxy.proxy.exchange"] = "0" * 64  # as if exchange.py changed after the build
    manifest.write_text(json.dumps(record))
    monkeypatch.setattr(compiled, "MANIFEST", manifest)
    config = Config.model_validate(
        {
            "listen": {"http": "127.0.0.1:0"},
            "control": {"socket": str(tmp_path / "ctl.sock")},
            "state_file": str(tmp_path / "state.json"),
        }
    )
    server = build_server(config)

    async def start() -> None:
        await server.start()

    with pytest.raises(StartupError, match=r"stale: edgeproxy\.proxy\.exchange changed"):
        asyncio.run(start())
    assert not (tmp_path / "ctl.sock").exists()
