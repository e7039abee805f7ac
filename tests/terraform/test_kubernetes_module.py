"""modules/kubernetes and examples/kubernetes: no kubernetes provider binary can be
installed here, so neither initialises or validates. They are parsed with
python-hcl2 and held to what the service needs (formatting and checkov run in
test_static.py): the RBAC the kubernetes provider uses, verbatim; probes on
/healthz and /readyz; a non-root, read-only container; the settings split into a
Secret and plain env; a NetworkPolicy that admits only the named sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.terraform.hcl import named, parse

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "terraform" / "modules" / "kubernetes"
EXAMPLE = ROOT / "terraform" / "examples" / "kubernetes"

pytestmark = pytest.mark.terraform

#: What the kubernetes provider needs, in one namespace (kept identical to deploy/kubernetes/).
PROVIDER_RBAC = [
    ("", "pods", ["get", "list", "watch", "create", "delete", "patch"]),
    ("", "pods/exec", ["create", "get"]),
    ("", "pods/log", ["get"]),
    ("", "persistentvolumeclaims", ["get", "list", "watch", "create", "delete"]),
    ("", "events", ["get", "list", "watch"]),
    ("networking.k8s.io", "networkpolicies", ["get", "list", "create", "delete"]),
]


@pytest.fixture(scope="module")
def module() -> dict[str, list[Any]]:
    return parse(MODULE)


def resource(parsed: dict[str, list[Any]], kind: str, name: str) -> dict[str, Any]:
    for block in parsed.get("resource", []):
        if kind in block and name in block[kind]:
            found: dict[str, Any] = block[kind][name]
            return found
    raise AssertionError(f"no resource {kind}.{name}")


def test_role_grants_exactly_what_the_provider_needs(module: dict[str, list[Any]]) -> None:
    role = resource(module, "kubernetes_role_v1", "api")
    rules = [(r["api_groups"], r["resources"], r["verbs"]) for r in role["rule"]]
    assert rules == [([group], [res], verbs) for group, res, verbs in PROVIDER_RBAC]
    # A Role, not a ClusterRole: one namespace, the module's.
    assert role["metadata"][0]["namespace"] == "${local.namespace}"
    binding = resource(module, "kubernetes_role_binding_v1", "api")
    assert binding["role_ref"][0]["kind"] == "Role"
    assert binding["subject"][0]["name"] == "${kubernetes_service_account_v1.api.metadata[0].name}"
    kinds = {kind for block in module["resource"] for kind in block}
    assert not kinds & {"kubernetes_cluster_role_v1", "kubernetes_cluster_role_binding_v1"}


def test_rbac_matches_deploy_kubernetes_when_present() -> None:
    """deploy/kubernetes/ (the provider's own manifests) must grant the same rules."""
    import yaml

    roles = [
        doc
        for path in sorted((ROOT / "deploy" / "kubernetes").rglob("*.y*ml"))
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "Role"
    ]
    if not roles:
        pytest.skip("deploy/kubernetes/ has no Role manifest on this branch")
    expected = {(group, res): sorted(verbs) for group, res, verbs in PROVIDER_RBAC}
    for role in roles:
        # However the manifest groups its rules: (group, resource) -> verbs.
        granted: dict[tuple[str, str], list[str]] = {}
        for rule in role["rules"]:
            for group in rule.get("apiGroups", []):
                for res in rule.get("resources", []):
                    granted[(group, res)] = sorted({*granted.get((group, res), []), *rule["verbs"]})
        assert granted == expected, role["metadata"]


def test_deployment_runs_replicas_with_probes_non_root(module: dict[str, list[Any]]) -> None:
    spec = resource(module, "kubernetes_deployment_v1", "api")["spec"][0]
    assert spec["replicas"] == "${var.replicas}"
    pod = spec["template"][0]["spec"][0]
    assert pod["security_context"][0]["run_as_non_root"] is True
    assert pod["service_account_name"] == "${kubernetes_service_account_v1.api.metadata[0].name}"
    (container,) = pod["container"]
    assert container["liveness_probe"][0]["http_get"][0]["path"] == "/healthz"
    assert container["readiness_probe"][0]["http_get"][0]["path"] == "/readyz"
    context = container["security_context"][0]
    assert context["run_as_non_root"] is True
    assert context["allow_privilege_escalation"] is False
    assert context["read_only_root_filesystem"] is True
    assert context["capabilities"][0]["drop"] == ["ALL"]
    resources = container["resources"][0]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    # Secrets through the Secret only; the plain settings as env.
    assert container["env_from"][0]["secret_ref"][0]["name"] == "${kubernetes_secret_v1.settings.metadata[0].name}"
    (env,) = container["dynamic"]
    assert env["env"]["for_each"] == "${local.plain_env}"
    secret = resource(module, "kubernetes_secret_v1", "settings")
    assert secret["data"] == "${module.config.secret_environment}"


def test_service_and_network_policy_front_the_api(module: dict[str, list[Any]]) -> None:
    service = resource(module, "kubernetes_service_v1", "api")["spec"][0]
    assert service["selector"] == "${local.selector}"
    assert service["port"][0]["target_port"] == "http"
    policy = resource(module, "kubernetes_network_policy_v1", "api")["spec"][0]
    assert policy["pod_selector"][0]["match_labels"] == "${local.selector}"
    assert policy["policy_types"] == ["Ingress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "8080", "protocol": "TCP"}]
    sources = [next(iter(block["from"]["content"][0])) for block in ingress["dynamic"]]
    assert sources == ["ip_block", "namespace_selector", "pod_selector"]


def test_module_renders_its_settings_with_the_core_module(module: dict[str, list[Any]]) -> None:
    (config,) = [block["config"] for block in module["module"] if "config" in block]
    assert config["source"] == "../sandbox-control"
    assert config["sandbox_provider"] == "kubernetes"
    assert config["kubernetes_namespace"] == "${var.namespace}"
    assert config["state_url"] == "${var.state_url}"
    variables = named(module, "variable")
    secret_inputs = {"api_secrets", "internal_callback_secret", "state_url", "s3_credentials", "extra_secret_env"}
    assert secret_inputs <= set(variables)
    for name, body in variables.items():
        assert body.get("sensitive", False) is (name in secret_inputs), name


def test_example_is_a_module_call() -> None:
    example = parse(EXAMPLE)
    (call,) = [block["sandbox_control"] for block in example["module"]]
    assert call["source"] == "../../modules/kubernetes"
    assert {"api_image", "sandbox_image", "api_secrets", "state_url", "s3", "ingress_from"} <= set(call)
    assert [next(iter(p)) for p in example["provider"]] == ["kubernetes"]
