"""`edgeproxy check-config`: every problem of a file in one run, with key paths and plain words."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeproxy.cli import cli
from edgeproxy.config import load_config, parse_config
from edgeproxy.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

SEVERAL_PROBLEMS = """\
listen:
  http: 0.0.0.0:80
  https: 443
control:
  mode: 660
timeouts:
  read: "60s"
apps:
  shop:
    colors:
      blue: {upstreams: ["http://127.0.0.1:9000"]}
sites:
  - hosts: [shop.example.com]
    routes:
      - {path: /, app: shop}
      - {path: /admin/, app: shopp}
  - hosts: [Shop.example.com]
    routes:
      - {path: /, upstream: "http://127.0.0.1:7700"}
"""


def check(tmp_path: Path, text: str, name: str = "edgeproxy.yml") -> tuple[int, str]:
    path = tmp_path / name
    path.write_text(text)
    res = CliRunner().invoke(cli, ["check-config", str(path)])
    return res.exit_code, res.output


def test_check_config_reports_every_problem_of_a_file_in_one_run_with_key_paths_and_plain_words(
    tmp_path: Path,
) -> None:
    code, out = check(tmp_path, SEVERAL_PROBLEMS)
    f = tmp_path / "edgeproxy.yml"
    assert code == 2
    assert sorted(out.strip().splitlines()) == sorted(
        [
            f"{f}: listen.https: expected HOST:PORT such as 0.0.0.0:443, got the number 443",
            f"{f}: control.mode: 660 is read as a decimal number; a mode is octal: "
            'write 0660 (or the string "660")',
            f"{f}: timeouts.read: durations are plain numbers of seconds, without a unit: "
            "write 60 instead of '60s'",
            f"{f}: sites[0].routes[1].app: unknown app 'shopp' (apps: shop); "
            "add it under `apps:` or fix the name",
            f"{f}: sites[1].hosts: 'shop.example.com' is already listed in sites[0]; "
            "each host belongs to one site",
            f"{f}: tls.certificates: listen.https is set but no certificate is configured; "
            "add one (`certs selfsigned` makes a pair for staging)",
        ]
    )


def test_type_errors_deep_in_the_tree_use_bracketed_list_indexes_and_say_what_was_expected() -> (
    None
):
    with pytest.raises(ConfigError) as e:
        parse_config(
            "apps: {shop: {colors: {blue: {upstreams: [http://127.0.0.1:9]}},"
            " health: {interval: 5m}}}\n"
            "sites:\n"
            "  - hosts: [a.example.com]\n"
            "    routes:\n"
            "      - {path: /, app: shop, strip_prefix: maybe, rate_limit: {rate: fast}}\n",
            "cfg.yml",
        )
    assert sorted(e.value.problems) == [
        "cfg.yml: apps.shop.health.interval: durations are plain numbers of seconds, "
        "without a unit: write 300 instead of '5m'",
        "cfg.yml: sites[0].routes[0].rate_limit.rate: expected a number, got 'fast'",
        "cfg.yml: sites[0].routes[0].strip_prefix: expected true or false, got 'maybe'",
    ]


def test_a_yaml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    code, out = check(tmp_path, "listen:\n  http: 0.0.0.0:80\n  https: [0.0.0.0:443\napps: {}\n")
    assert code == 2
    assert out.startswith(f"{tmp_path / 'edgeproxy.yml'}:4:")
    assert "not valid YAML" in out
    assert "<unicode string>" not in out


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n"])
def test_an_empty_file_is_refused_with_a_nonzero_exit(tmp_path: Path, text: str) -> None:
    code, out = check(tmp_path, text)
    assert code == 2
    assert "the file is empty" in out
    assert ": ok (" not in out


@pytest.mark.parametrize("written", ["0660", "0o660", '"660"', '"0660"'])
def test_a_socket_mode_written_in_octal_is_taken(written: str) -> None:
    cfg = parse_config(f"control: {{mode: {written}}}\napps: {{}}\n")
    assert cfg.control.mode == 0o660


def test_the_medusa_config_gives_the_socket_to_the_deploy_users_group_by_number() -> None:
    control = load_config(ROOT / "compose" / "medusa" / "edgeproxy.yml").control
    assert control.mode == 0o660
    assert isinstance(control.group, int)
    assert control.group in control.allow_gids
