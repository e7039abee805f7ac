"""The aws module's snapshot bucket, applied for real against the tests' S3 server.

HashiCorp's aws provider 3.39 (from the filesystem mirror) with its S3 endpoint
pointed at the local server creates the bucket exactly as the module writes it;
the service, configured for that bucket and not allowed to create one, then
snapshots a sandbox into it and restores it. The rest of the module (EC2, IAM,
RDS) is only planned, against a mock provider, in modules/aws/tests.

moto enforces a bucket policy's Deny statements but ignores their conditions, so
the module's TLS-only policy (Deny when aws:SecureTransport is false) would deny
every request there, TLS or not. The policy is therefore read back as written,
and the service's test applies the bucket without it."""

from __future__ import annotations

import json
import secrets
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from app.settings import Settings
from tests.fixtures.app import serve_in_process
from tests.fixtures.s3 import S3Server
from tests.fixtures.terraform import Terraform

pytestmark = [pytest.mark.terraform, pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(600)]

#: Only the bucket's resources (and what they depend on: the bucket) are applied.
BUCKET = "-target=module.sandbox_control.aws_s3_bucket_public_access_block.snapshots"
POLICY = "-target=module.sandbox_control.aws_s3_bucket_policy.snapshots"


def root_config(server: S3Server, name: str) -> str:
    """A root module calling modules/aws, with the aws provider (3.39 syntax) aimed at ``server``."""
    return textwrap.dedent(
        f"""
        terraform {{
          required_providers {{
            aws = {{ source = "hashicorp/aws", version = "3.39.0" }}
          }}
        }}

        provider "aws" {{
          region                      = "{server.region}"
          access_key                  = "{server.access_key}"
          secret_key                  = "{server.secret_key}"
          s3_force_path_style         = true
          skip_credentials_validation = true
          skip_metadata_api_check     = true
          skip_requesting_account_id  = true
          skip_region_validation      = true
          skip_get_ec2_platforms      = true
          endpoints {{
            s3 = "{server.endpoint}"
          }}
        }}

        variable "api_secrets" {{
          type      = list(string)
          sensitive = true
        }}

        module "sandbox_control" {{
          source               = "{{tree}}/modules/aws"
          name                 = "{name}"
          vpc_id               = "vpc-0123456789abcdef0"
          subnet_id            = "subnet-0123456789abcdef0"
          allowed_cidrs        = ["203.0.113.0/24"]
          api_image            = "registry.example.com/sandbox-control:test"
          sandbox_image        = "registry.example.com/sandbox-control-sandbox:test"
          api_secrets          = var.api_secrets
          force_destroy_bucket = true
        }}

        output "bucket_name" {{
          value = module.sandbox_control.bucket_name
        }}
        """
    )


@pytest.fixture
def apply_bucket(terraform: Terraform, s3_server: S3Server) -> Iterator[Callable[..., str]]:
    """Apply the module's bucket (with its policy unless told otherwise); destroy it afterwards."""
    terraform.require_aws()
    if not s3_server.running:
        s3_server.start()
    applied: list[tuple[Path, list[str]]] = []
    env = {"TF_VAR_api_secrets": json.dumps([secrets.token_hex(32)])}

    def apply(*, policy: bool = True) -> str:
        name = f"tfs3{secrets.token_hex(3)}"
        directory = terraform.root(name, root_config(s3_server, name))
        targets = [BUCKET, POLICY] if policy else [BUCKET]
        terraform.init(directory)
        applied.append((directory, targets))
        terraform.run("apply", "-auto-approve", "-no-color", *targets, cwd=directory, env=env)
        return terraform.run("output", "-raw", "bucket_name", cwd=directory).stdout.strip()

    try:
        yield apply
    finally:
        for directory, targets in applied:
            terraform.run("destroy", "-auto-approve", "-no-color", *targets, cwd=directory, env=env)


def test_bucket_is_created_as_the_module_writes_it(apply_bucket: Callable[..., str], s3_server: S3Server) -> None:
    applied_bucket = apply_bucket()
    client: Any = s3_server.client()
    assert applied_bucket.startswith("tfs3")
    assert client.get_bucket_versioning(Bucket=applied_bucket)["Status"] == "Enabled"
    (rule,) = client.get_bucket_encryption(Bucket=applied_bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    (lifecycle,) = client.get_bucket_lifecycle_configuration(Bucket=applied_bucket)["Rules"]
    assert lifecycle["Status"] == "Enabled"
    assert lifecycle["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert set(client.get_public_access_block(Bucket=applied_bucket)["PublicAccessBlockConfiguration"].values()) == {
        True
    }
    policy = json.loads(client.get_bucket_policy(Bucket=applied_bucket)["Policy"])
    assert [s["Effect"] for s in policy["Statement"]] == ["Deny"]
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


async def test_service_snapshots_into_the_bucket(
    apply_bucket: Callable[..., str],
    s3_server: S3Server,
    make_settings: Callable[..., Settings],
    provider_workdir: Path,
) -> None:
    applied_bucket = apply_bucket(policy=False)
    settings = make_settings(
        provider="local",
        data_dir=provider_workdir / "data",
        s3_endpoint=s3_server.endpoint,
        s3_bucket=applied_bucket,
        s3_access_key=SecretStr(s3_server.access_key),
        s3_secret_key=SecretStr(s3_server.secret_key),
        s3_region=s3_server.region,
        # The bucket is Terraform's: the service must find it, not make it.
        s3_create_bucket=False,
    )
    async with serve_in_process(settings) as (_app, raw, client):
        assert (await raw.get("/readyz")).json()["checks"]["blobs"] == "ok"
        sandbox = await client.create(labels={"bucket": "terraform"})
        try:
            written = await client.exec(sandbox["id"], ["sh", "-c", "echo kept > /workspace/note"])
            assert written["exit_code"] == 0
            snapshot = await client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={})
            assert snapshot["status"] == "ready"
            restored = await client.request("POST", f"/v1/snapshots/{snapshot['id']}/restore", json={})
            try:
                read = await client.exec(restored["id"], ["cat", "/workspace/note"])
                assert read["stdout"] == "kept\n"
            finally:
                await client.delete(restored["id"])
        finally:
            await client.delete(sandbox["id"])
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=applied_bucket).get("Contents", [])]
    assert f"snapshots/{snapshot['id']}.json" in keys
    assert any(k.startswith("chunks/") for k in keys)  # format v2: the archive is in shared chunks
