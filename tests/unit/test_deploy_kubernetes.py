"""deploy/kubernetes: the manifests parse, fit together, and the Role is the agreed rule list.

The Terraform module (terraform/modules/kubernetes) grants the same rules;
the stub API server authorises every provider test with this Role.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"

AGREED_RULES = [
    ("", "pods", {"get", "list", "watch", "create", "delete", "patch"}),
    ("", "pods/exec", {"create", "get"}),
    ("", "pods/log", {"get"}),
    ("", "persistentvolumeclaims", {"get", "list", "watch", "create", "delete"}),
    ("", "events", {"get", "list", "watch"}),
    ("networking.k8s.io", "networkpolicies", {"get", "list", "create", "delete"}),
]


def documents() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def test_role_is_exactly_the_agreed_rule_list() -> None:
    role = documents()[("Role", "sandbox-control")]
    rules = [(g, r, set(rule["verbs"])) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]]
    assert sorted(rules, key=str) == sorted(AGREED_RULES, key=str)


def test_manifests_fit_together() -> None:
    docs = documents()
    namespace = docs[("Namespace", "sandbox-control")]["metadata"]["name"]
    for (kind, _), doc in docs.items():
        if kind != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, kind
    binding = docs[("RoleBinding", "sandbox-control")]
    assert binding["roleRef"]["name"] == "sandbox-control"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sandbox-control", "namespace": namespace}]
    deployment = docs[("Deployment", "sandbox-control")]
    pod = deployment["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == "sandbox-control"
    env = {item["name"]: item for item in pod["spec"]["containers"][0]["env"]}
    assert env["SANDBOX_PROVIDER"]["value"] == "kubernetes"
    assert env["SANDBOX_K8S_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    service = docs[("Service", "sandbox-control")]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"
    )
