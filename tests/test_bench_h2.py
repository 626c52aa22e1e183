"""bench/h2.py's pure parts and generated config: h2load's output, p99, nginx with http2."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.h2 import h2load_argv, nginx_h2_conf, p99_ms, parse_h2load
from bench.peers import Listen
from bench.procs import BenchError
from bench.tlscert import make_selfsigned

H2LOAD_OUT = """\
finished in 1.42s, 7039.12 req/s, 512.34KB/s
requests: 10000 total, 10000 started, 10000 done, 9998 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 9998 2xx, 0 3xx, 0 4xx, 2 5xx
"""


def test_h2load_summary_is_parsed_into_successes_failures_seconds_and_rate() -> None:
    assert parse_h2load(H2LOAD_OUT) == (9998, 2, 1.42, 7039.12)
    assert parse_h2load(H2LOAD_OUT.replace("1.42s", "812.5ms"))[2] == pytest.approx(0.8125)


def test_h2load_output_without_a_summary_is_an_error_naming_the_output() -> None:
    with pytest.raises(BenchError, match="cannot read h2load's output"):
        parse_h2load("connect: Connection refused\n")


def test_p99_is_read_from_h2loads_per_request_log(tmp_path: Path) -> None:
    log = tmp_path / "log.tsv"
    log.write_text("".join(f"1700000000{i:06d}\t200\t{(i + 1) * 1000}\n" for i in range(200)))
    assert p99_ms(log) == 199.0  # microseconds in the third column, 99th of 200


def test_h2_runs_use_streams_and_h1_runs_use_one_request_per_connection(tmp_path: Path) -> None:
    h2 = h2load_argv("https://x/13", "h2", 100, tmp_path / "l")
    h1 = h2load_argv("https://x/13", "h1", 100, tmp_path / "l")
    assert h2[h2.index("-m") + 1] == "10" and "--h1" not in h2
    assert h1[h1.index("-m") + 1] == "1" and "--h1" in h1
    assert h2[h2.index("-c") + 1] == h1[h1.index("-c") + 1] == "10"


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_the_nginx_h2_config_passes_nginx_t_and_listens_with_http2(tmp_path: Path) -> None:
    cert = make_selfsigned(tmp_path)
    text = nginx_h2_conf(tmp_path, Listen(18081, 18444), "127.0.0.1:9", cert)
    assert "18444 ssl http2 backlog" in text
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    out = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-e", str(tmp_path / "e.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
