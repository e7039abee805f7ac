"""terraform/ checked without applying anything: formatting, validation of every
configuration that initialises offline, the modules' own ``terraform test`` files,
and checkov over every module and example."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.terraform import Terraform, find_terraform

pytestmark = pytest.mark.terraform

#: Configurations that initialise offline: no provider, or aws through the mirror.
#: modules/kubernetes and examples/kubernetes need the kubernetes provider, which no
#: reachable registry ships; tests/terraform/test_kubernetes_module.py checks them.
VALIDATED = ["modules/sandbox-control", "modules/docker-host", "modules/aws", "examples/local-docker", "examples/aws"]
NEEDS_AWS = {"modules/aws", "examples/aws"}
#: Modules with ``tests/*.tftest.hcl`` files.
TESTED = ["modules/sandbox-control", "modules/aws"]
SCANNED = ["modules/sandbox-control", "modules/docker-host", "modules/aws", "modules/kubernetes", "examples"]
#: A justification worth the name, not a bare "skip".
MIN_REASON = 30


def test_every_file_is_formatted(terraform: Terraform) -> None:
    result = terraform.run("fmt", "-check", "-recursive", "-diff", "-no-color", cwd=terraform.tree, check=False)
    assert result.returncode == 0, f"not formatted (terraform fmt -recursive terraform/):\n{result.stdout}"


@pytest.mark.parametrize("config", VALIDATED)
def test_configuration_validates(terraform: Terraform, config: str) -> None:
    if config in NEEDS_AWS:
        terraform.require_aws()
    directory = terraform.path(config)
    terraform.init(directory)
    result = terraform.run("validate", "-json", "-no-color", cwd=directory, check=False)
    report = json.loads(result.stdout)
    assert report["valid"], json.dumps(report["diagnostics"], indent=2)
    assert report["error_count"] == 0


@pytest.mark.parametrize("module", TESTED)
def test_module_test_files_pass(terraform: Terraform, module: str) -> None:
    if module in NEEDS_AWS:
        terraform.require_aws()
    directory = terraform.path(module)
    assert list((directory / "tests").glob("*.tftest.hcl")), f"{module} has no terraform test files"
    terraform.init(directory)
    result = terraform.run("test", "-no-color", cwd=directory, check=False, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout and "Success!" in result.stdout, result.stdout


def run_checkov(checkov: str, directory: Path) -> dict[str, Any]:
    """checkov's terraform results for one directory (an empty report when it found no resource)."""
    # The .tftest.hcl files are not configuration; checkov would report them as parse errors.
    skip_tests = ["--skip-path", r"\.tftest\.hcl$"]
    result = subprocess.run(
        [checkov, "-d", str(directory), "--framework", "terraform", "--skip-download", "-o", "json", *skip_tests],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), f"checkov failed to run ({result.returncode}): {result.stderr[-3000:]}"
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    found = [r for r in reports if r.get("check_type") == "terraform"]
    if not found:
        # checkov prints a bare summary when a directory has no resource it checks.
        return {"results": {"passed_checks": [], "failed_checks": [], "skipped_checks": []}, "summary": {}}
    assert len(found) == 1, reports
    report: dict[str, Any] = found[0]
    return report


@pytest.fixture(scope="module")
def checkov_report(terraform: Terraform, checkov: str) -> Callable[[str], dict[str, Any]]:
    """checkov's report of a directory of the tree, run once per directory (checkov starts slowly)."""
    reports: dict[str, dict[str, Any]] = {}

    def report(scanned: str) -> dict[str, Any]:
        if scanned not in reports:
            reports[scanned] = run_checkov(checkov, terraform.path(scanned))
        return reports[scanned]

    return report


@pytest.mark.parametrize("scanned", SCANNED)
def test_checkov_passes_or_each_skip_says_why(checkov_report: Callable[[str], dict[str, Any]], scanned: str) -> None:
    report = checkov_report(scanned)
    results = report["results"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}" for c in results["failed_checks"]
    ]
    assert not failed, "checkov failures (fix them, or skip in place with checkov:skip=ID:reason):\n" + "\n".join(
        failed
    )
    assert report["summary"].get("parsing_errors", 0) == 0, report["summary"]
    unexplained = [
        f"{c['check_id']} {c['resource']}"
        for c in results["skipped_checks"]
        if len((c.get("check_result") or {}).get("suppress_comment") or "") < MIN_REASON
    ]
    assert not unexplained, f"skips without a reason: {unexplained}"


def test_checkov_judges_the_modules_resources(checkov_report: Callable[[str], dict[str, Any]]) -> None:
    """The scans above look at something: the bucket, the host and the Deployment among them."""
    checked = {c["resource"] for c in checkov_report("modules/aws")["results"]["passed_checks"]}
    assert {"aws_s3_bucket.snapshots", "aws_instance.host", "aws_security_group.host"} <= checked
    checked = {c["resource"] for c in checkov_report("modules/kubernetes")["results"]["passed_checks"]}
    assert "kubernetes_deployment_v1.api" in checked


def test_missing_terraform_fails_in_strict_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.support.STRICT", True)
    with pytest.raises(pytest.fail.Exception, match="terraform is not installed"):
        find_terraform(search_path=str(tmp_path))
    monkeypatch.setattr("tests.support.STRICT", False)
    with pytest.raises(pytest.skip.Exception, match="terraform is not installed"):
        find_terraform(search_path=str(tmp_path))
