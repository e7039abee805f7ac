"""Every module documents itself: each variable and output has a description and a
row in the module's README tables, and every secret input is sensitive."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.terraform.hcl import named, parse

pytestmark = pytest.mark.terraform

TERRAFORM = Path(__file__).resolve().parents[2] / "terraform"
MODULES = sorted(p.name for p in (TERRAFORM / "modules").iterdir() if p.is_dir())
EXAMPLES = sorted(p.name for p in (TERRAFORM / "examples").iterdir() if p.is_dir())
#: Input names that carry secrets, in any module or example.
SECRET_INPUTS = {
    "api_secrets",
    "internal_callback_secret",
    "s3_credentials",
    "state_url",
    "extra_secret_env",
    "secret_files",
    "database_password",
}


def test_layout_is_the_documented_one() -> None:
    assert MODULES == ["aws", "docker-host", "kubernetes", "sandbox-control"]
    assert EXAMPLES == ["aws", "kubernetes", "local-docker"]


@pytest.mark.parametrize("module", MODULES)
def test_module_readme_tables_list_every_input_and_output(module: str) -> None:
    parsed = parse(TERRAFORM / "modules" / module)
    readme = (TERRAFORM / "modules" / module / "README.md").read_text()
    assert "## Inputs" in readme and "## Outputs" in readme
    for kind in ("variable", "output"):
        for name, body in named(parsed, kind).items():
            assert body.get("description"), f"{module}: {kind} {name} has no description"
            assert f"| `{name}` |" in readme, f"{module}/README.md lacks a row for {kind} {name}"


@pytest.mark.parametrize("config", [f"modules/{m}" for m in MODULES] + [f"examples/{e}" for e in EXAMPLES])
def test_versions_and_typed_inputs_with_secrets_sensitive(config: str) -> None:
    parsed = parse(TERRAFORM / config)
    assert "required_version" in (TERRAFORM / config / "versions.tf").read_text(), f"{config}: no versions.tf"
    for name, body in named(parsed, "variable").items():
        assert "type" in body, f"{config}: variable {name} has no type"
        assert body.get("description"), f"{config}: variable {name} has no description"
        if name in SECRET_INPUTS:
            assert body.get("sensitive") is True, f"{config}: variable {name} holds secrets but is not sensitive"
