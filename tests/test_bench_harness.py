"""The bench harness's pure parts (wrk parsing, statistics, config generation) and a
short real-socket run of its backend and load client. No timing assertions."""

from __future__ import annotations

import http.client
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import uvloop

from bench import hotpath, report, wrk
from bench.loadgen import Group, source_address
from bench.peers import (
    Listen,
    answers,
    edgeproxy_conf,
    haproxy_conf,
    nginx_backend_conf,
    nginx_proxy_conf,
)
from bench.procs import BenchError, free_port, process_tree, running
from bench.stats import binomial_ci95, fmt_k, fmt_ratio, median, percentile, ratio
from bench.switch_analysis import (
    Flip,
    Response,
    analyze_switch,
    canary_split,
    same_color_share,
    timeline,
)
from bench.throughput import Case, Measurement, rotated, summarize
from bench.throughput import ratios as ratio_rows
from bench.tlscert import CertFiles, make_selfsigned
from edgeproxy.config import parse_config

WRK_KEEPALIVE = """\
Running 1s test @ http://127.0.0.1:19002/13
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   116.29us  158.31us   3.43ms   98.51%
    Req/Sec    90.18k    18.54k  121.10k    72.73%
  Latency Distribution
     50%   94.00us
     75%  131.00us
     90%  162.00us
     99%  351.00us
  98205 requests in 1.10s, 7.31MB read
Requests/sec:  89243.85
Transfer/sec:      6.64MB
"""

WRK_WITH_ERRORS = """\
Running 5s test @ https://127.0.0.1:8443/16k
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    37.70ms   12.00ms   1.20s    90.00%
    Req/Sec     1.18k   100.00     1.30k    80.00%
  Latency Distribution
     50%   35.00ms
     75%   40.00ms
     90%   45.00ms
     99%    1.02s
  5875 requests in 5.00s, 92.10MB read
  Socket errors: connect 3, read 17, write 0, timeout 2
  Non-2xx or 3xx responses: 12
Requests/sec:   1175.00
Transfer/sec:     18.42MB
"""


def test_wrk_output_is_parsed_into_rate_percentiles_and_byte_count() -> None:
    r = wrk.parse(WRK_KEEPALIVE)
    assert r.requests == 98205
    assert r.seconds == pytest.approx(1.10)
    assert r.rps == pytest.approx(89243.85)
    assert r.latency_ms == pytest.approx({"50": 0.094, "75": 0.131, "90": 0.162, "99": 0.351})
    assert r.p99_ms == pytest.approx(0.351)
    assert r.latency_avg_ms == pytest.approx(0.11629)
    assert r.latency_max_ms == pytest.approx(3.43)
    assert r.bytes_read == pytest.approx(7.31 * 1024**2)
    assert r.error_count == 0


def test_wrk_socket_errors_non_2xx_and_second_latencies_are_counted() -> None:
    r = wrk.parse(WRK_WITH_ERRORS)
    assert r.errors == {"connect": 3, "read": 17, "write": 0, "timeout": 2, "non2xx": 12}
    assert r.error_count == 34
    assert r.p99_ms == pytest.approx(1020.0)
    assert r.latency_max_ms == pytest.approx(1200.0)


def test_wrk_output_without_a_request_count_is_an_error_naming_the_output() -> None:
    with pytest.raises(Exception, match="no request count"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_argv_asks_for_a_new_connection_per_request_in_close_mode() -> None:
    cmd = wrk.argv("http://x/13", connections=50, duration=5, close=True)
    assert cmd[:5] == ["wrk", "-t1", "-c50", "-d5s", "--latency"]
    assert cmd[-3:] == ["-H", "Connection: close", "http://x/13"]
    assert "Connection: close" not in wrk.argv("http://x/13")


@pytest.mark.parametrize(
    ("text", "ms"),
    [("780.12us", 0.78012), ("1.50ms", 1.5), ("2.00s", 2000.0), ("1.00m", 60000.0)],
)
def test_wrk_durations_convert_to_milliseconds(text: str, ms: float) -> None:
    assert wrk.duration_ms(text) == pytest.approx(ms)


def test_median_percentile_and_ratio_skip_missing_values() -> None:
    assert median([3.0, 1.0, float("nan"), 2.0]) == 2.0
    assert math.isnan(median([]))
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([5.0], 50) == 5.0
    assert ratio(50.0, 100.0) == 0.5
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 1.0) is None
    assert ratio(float("nan"), 1.0) is None


def test_wilson_interval_contains_the_observed_share_and_narrows_with_more_trials() -> None:
    lo, hi = binomial_ci95(1000, 10000)
    assert lo < 0.1 < hi
    lo2, hi2 = binomial_ci95(100, 1000)
    assert hi2 - lo2 > hi - lo
    assert binomial_ci95(0, 10)[0] == 0.0


def test_formatting_shows_thousands_ratios_and_missing_values() -> None:
    assert fmt_k(64321.0) == "64.3k"
    assert fmt_k(None) == "-"
    assert fmt_ratio(0.9876) == "0.99x"
    assert fmt_ratio(None) == "-"


def _measurement(peer: str, rps: float, p99: float, cpu_s: float | None, rnd: int) -> Measurement:
    result = wrk.WrkResult(
        requests=int(rps * 5),
        seconds=5.0,
        rps=rps,
        latency_ms={"99": p99},
        latency_avg_ms=1.0,
        latency_max_ms=2.0,
        bytes_read=0.0,
        errors={"connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0},
    )
    return Measurement(
        case=Case(peer, "http", "13", "keepalive"),
        round=rnd,
        result=result,
        proxy_cpu_pct=None if cpu_s is None else 20 * cpu_s,
        proxy_cpu_s=cpu_s,
        proxy_rss_kib=None if cpu_s is None else 10240 + rnd,
        backend_cpu_pct=50.0,
        backend_cpu_s=2.5,
        wrk_cpu_pct=50.0,
        other_cpu_pct=0.0,
    )


def test_summaries_take_the_median_of_rounds_and_ratios_compare_medians() -> None:
    ms = [
        _measurement("nginx", rps, 1.0, 5.0, i) for i, rps in enumerate([60000.0, 64000.0, 62000.0])
    ] + [
        _measurement("edgeproxy", rps, 2.0, 5.0, i)
        for i, rps in enumerate([30000.0, 32000.0, 31000.0])
    ]
    summaries = {s.case.peer: s for s in summarize(ms)}
    nginx = summaries["nginx"]
    assert (nginx.rps_median, nginx.rps_min, nginx.rps_max) == (62000.0, 60000.0, 64000.0)
    assert nginx.rounds == 3
    assert nginx.req_per_cpu_s == pytest.approx(62000.0)
    assert nginx.proxy_rss_mib == pytest.approx((10240 + 2) / 1024)
    [row] = ratio_rows(list(summaries.values()))
    assert row["config"] == "http 13 keepalive"
    assert row["rps_vs_nginx"] == pytest.approx(0.5)
    assert row["p99_vs_nginx"] == pytest.approx(2.0)
    assert row["rps_vs_haproxy"] is None


def test_each_round_runs_every_case_once_in_a_different_order() -> None:
    cases = [Case(p, "http", b, "keepalive") for p in ("nginx", "haproxy") for b in ("13", "16k")]
    orders = [rotated(cases, r) for r in range(3)]
    assert all(sorted(o, key=str) == sorted(cases, key=str) for o in orders)
    assert orders[0] != orders[1]


def test_load_groups_and_source_addresses_parse() -> None:
    assert Group.parse("close:50:/color:200") == Group("close", 50, "/color", 200)
    assert Group.parse("keepalive:2:/") == Group("keepalive", 2, "/", 0)
    with pytest.raises(ValueError, match="MODE:WORKERS:PATH"):
        Group.parse("pipeline:2:/")
    assert source_address(0) == "127.1.0.1"
    assert source_address(255) == "127.1.1.0"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_selfsigned(tmp_path_factory.mktemp("cert"))


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
@pytest.mark.parametrize("role", ["proxy", "backend"])
def test_generated_nginx_configs_pass_nginx_t(tmp_path: Path, cert: CertFiles, role: str) -> None:
    conf = tmp_path / "nginx.conf"
    listen = Listen(18080, 18443)
    text = (
        nginx_proxy_conf(tmp_path, listen, "127.0.0.1:9", cert)
        if role == "proxy"
        else nginx_backend_conf(tmp_path, listen, cert)
    )
    conf.write_text(text)
    out = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-e", str(tmp_path / "e.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert ("keepalive 64;" in text) == (role == "proxy")


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_generated_haproxy_config_passes_haproxy_c(tmp_path: Path, cert: CertFiles) -> None:
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(haproxy_conf(tmp_path, Listen(18080, 18443), "127.0.0.1:9", cert))
    out = subprocess.run(["haproxy", "-c", "-f", str(conf)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "http-reuse always" in conf.read_text()


def test_generated_edgeproxy_config_validates_with_two_colors(
    tmp_path: Path, cert: CertFiles
) -> None:
    text = edgeproxy_conf(
        tmp_path,
        Listen(18080, 18443),
        {"blue": "127.0.0.1:9001", "green": "127.0.0.1:9002"},
        cert,
        access_log=True,
    )
    cfg = parse_config(text)
    app = cfg.apps["bench"]
    assert list(app.colors) == ["blue", "green"]
    assert app.colors["green"].upstreams == ["http://127.0.0.1:9002"]
    assert cfg.access_log.enabled
    assert cfg.listen.https == "127.0.0.1:18443"
    assert not cfg.sites[0].https_redirect


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "bench.backend", "--http", f"127.0.0.1:{port}"]
    with running(
        "backend",
        [*argv, "--color", "blue"],
        log_dir=tmp_path,
        cpus=None,
        ready=lambda: answers(url + "/health"),
    ):
        yield url


def test_load_client_records_every_response_with_its_color(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--url",
            backend,
            "--out",
            str(out),
            "--group",
            "keepalive:2:/color:20",
            "--group",
            "close:3:/slow/1:5",
            "--sources",
            "4",
        ],
        check=True,
        timeout=60,
    )
    rec = json.loads(out.read_text())["records"]
    assert len(rec["status"]) == 2 * 20 + 3 * 5
    assert set(rec["status"]) == {200}
    assert set(rec["color"]) == {"blue"}
    assert {s for s, g in zip(rec["source"], rec["group"], strict=True) if g == 1} == {0, 1, 2, 3}
    assert all(d >= s for s, d in zip(rec["t_sent"], rec["t_done"], strict=True))


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_run_against_the_backend_returns_parsed_figures(backend: str) -> None:
    r = wrk.run(backend + "/16k", cpus=None, connections=4, duration=1, close=True)
    assert r.requests > 0
    assert r.error_count == 0
    assert r.bytes_read > 16384


def _resp(sent: float, done: float, color: str, status: int = 200, source: int = -1) -> Response:
    return Response(sent, done, status, color, 0, source, "" if status else "ConnectionResetError")


def test_switch_analysis_measures_reply_to_new_color_and_finds_stale_responses() -> None:
    flips = [Flip("green", 1.0, 1.01, True, 2), Flip("blue", 2.0, 2.02, True, 3)]
    responses = [
        _resp(0.5, 0.6, "blue"),
        _resp(1.005, 1.012, "blue"),  # sent during the set: either color is right
        _resp(1.02, 1.03, "green"),  # first green, 20 ms after the reply
        _resp(1.5, 1.6, "blue"),  # wholly after the reply to green: stale
        _resp(1.95, 2.05, "blue"),  # finished after the next set was sent: not stale
        _resp(2.03, 2.05, "blue"),
        _resp(2.1, 2.2, "", status=0),
    ]
    result = analyze_switch(responses, flips)
    assert result["reply_to_first_new_color"]["count"] == 2
    assert result["reply_to_first_new_color"]["median_ms"] == pytest.approx(25.0)
    assert result["stale_responses"] == 1
    assert result["stale_examples"][0]["sent_after_reply_ms"] == pytest.approx(490.0)
    assert result["failures"] == 1
    assert result["counts"] == {"200 blue": 5, "200 green": 1, "failed ConnectionResetError": 1}
    assert result["switches_per_second"] == pytest.approx(2 / 1.02)


def test_timeline_buckets_responses_by_color_and_keeps_failures_apart() -> None:
    responses = [_resp(0.0, 0.05, "blue"), _resp(0.0, 0.15, "green"), _resp(0, 0.16, "", 0)]
    tl = timeline(responses, [0.1], t0=0.0, bucket=0.1)
    assert tl["series"] == {"blue": [1, 0], "failed": [0, 1], "green": [0, 1]}
    assert tl["switches"] == [0.1]


def test_canary_split_reports_share_interval_and_per_client_consistency() -> None:
    first = [_resp(0, 1, "green" if i % 10 == 0 else "blue", source=i) for i in range(1000)]
    second = [_resp(0, 1, "green" if i % 5 == 0 else "blue", source=i) for i in range(1000)]
    split = canary_split(first, "green", 10)
    assert split["observed_percent"] == pytest.approx(10.0)
    assert split["within_ci"]
    assert split["clients"] == 1000
    assert not canary_split(second, "green", 10)["within_ci"]
    assert same_color_share(first, second) == pytest.approx(0.9)


@pytest.mark.parametrize(
    "command",
    ["throughput", "tls-handshakes", "memory", "switch", "drain", "canary", "backends", "report"],
)
def test_every_bench_command_has_help(command: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", command, "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout


def test_report_renders_a_saved_throughput_run_with_ratios(tmp_path: Path) -> None:
    ms = [
        _measurement("nginx", 60000.0, 1.0, 5.0, 0),
        _measurement("edgeproxy", 30000.0, 2.0, 5.0, 0),
    ]
    summaries = summarize(ms)
    doc = {
        "command": "throughput",
        "summaries": [asdict(s) for s in summaries],
        "ratios": ratio_rows(summaries),
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    out = subprocess.run(
        [sys.executable, "-m", "bench", "report", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "| http 13 keepalive | edgeproxy | 30,000 |" in out.stdout
    assert "| http 13 keepalive | 0.50x |" in out.stdout


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_a_started_server_and_its_children_are_stopped_when_the_block_ends(
    tmp_path: Path,
) -> None:
    # Written then renamed, so "the file exists" means "the pid is in it".
    script = (
        f"sleep 300 & echo $! > {tmp_path}/child.tmp; "
        f"mv {tmp_path}/child.tmp {tmp_path}/child.pid; exec sleep 300"
    )
    with running(
        "sleepers",
        ["sh", "-c", script],
        log_dir=tmp_path,
        cpus=None,
        ready=lambda: (tmp_path / "child.pid").exists(),
    ) as proc:
        child = int((tmp_path / "child.pid").read_text())
        sample = proc.sample()
        assert sample.pids == 2
        assert sample.rss_kib > 0
        assert set(process_tree(proc.pid)) == {proc.pid, child}
    assert not _alive(proc.pid)
    # SIGKILL to the group is asynchronous for the orphaned child: give it a moment.
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child)


def test_a_server_that_exits_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    with (
        pytest.raises(BenchError, match=r"(?s)exited with status 3.*no such config"),
        running(
            "broken",
            ["sh", "-c", "echo no such config; exit 3"],
            log_dir=tmp_path,
            cpus=None,
            ready=lambda: False,
        ),
    ):
        pass


def test_the_probe_relays_keepalive_and_close_requests_to_the_backend(
    backend: str, tmp_path: Path
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "bench.probe", "--listen", f"127.0.0.1:{port}"]
    argv += ["--upstream", backend.removeprefix("http://")]
    with running(
        "probe",
        argv,
        log_dir=tmp_path,
        cpus=None,
        ready=lambda: answers(f"http://127.0.0.1:{port}/health"),
    ):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        bodies = []
        for path in ("/16k", "/13"):
            conn.request("GET", path)
            bodies.append(conn.getresponse().read())
        conn.request("GET", "/color", headers={"Connection": "close"})
        last = conn.getresponse()
        bodies.append(last.read())
        conn.close()
    assert bodies == [b"x" * 16384, b"Hello, World!", b"blue"]
    assert last.getheader("Connection") == "close"
    assert last.will_close


def test_handshake_table_rows_have_as_many_cells_as_its_header() -> None:
    ms = [_measurement("nginx", 1500.0, 20.0, 4.0, 0)]
    summaries = summarize(ms)
    doc = {
        "summaries": [asdict(s) for s in summaries],
        "ratios": [],
        "resumption": {"nginx": {"version": "TLSv1.3", "cipher": "X", "resumed": False}},
    }
    header, _, row = report.handshakes_markdown(doc).splitlines()[:3]
    assert header.count("|") == row.count("|")
    assert "| no |" in row


@pytest.mark.parametrize(("policies", "full"), [(False, False), (True, False), (False, True)])
def test_the_hot_path_bench_relays_every_request_in_each_mode(policies: bool, full: bool) -> None:
    # run() asserts that each request reached the upstream and each response is a 200.
    per_request = uvloop.run(hotpath.run(300, policies, full))
    assert per_request > 0
