"""The API against its own OpenAPI document: schemathesis over every operation, on a real service.

A bounded, reproducible run (fixed seed, ~30 examples per operation, then
stateful sequences that follow the document's links) with every check
schemathesis has, against ``sandboxctl serve`` on the local provider:
0 server errors and 0 answers the document does not describe. The service is
configured so that fuzzing stays cheap and local: short exec deadlines, clones
to a closed port on 127.0.0.1, no control-plane host allowed, pools that do not
grow (the one hook below keeps a fuzzed pool's target at 0 or 1).

Checks left out, and why:
* ``positive_data_acceptance``: a valid request about a sandbox that does not
  exist is rightly a 404 (or 409 for one that is not running), not a 2xx;
* ``object_level_authorization``, ``ignored_auth``: there are no users here, one
  shared secret opens everything; the auth tests (test_auth.py) cover it;
* ``max_response_time``: timings are for the benchmarks.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CHECKS, load_all_checks

from app.auth import make_token
from tests.fixtures.app import LiveServer, free_port
from tests.support import private_uid_range

pytestmark = pytest.mark.slow

SECRET = secrets.token_hex(32)
EXCLUDED = {"positive_data_acceptance", "object_level_authorization", "ignored_auth", "max_response_time"}
FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def all_checks() -> list[Any]:
    load_all_checks()
    return [check for check in CHECKS.get_all() if check.__name__ not in EXCLUDED]


@pytest.fixture(scope="module")
def contract_server() -> Iterator[LiveServer]:
    # Sandbox uids must traverse to the data dir: a fresh 0711 dir (pytest's tmp dirs are 0700).
    work = Path(tempfile.mkdtemp(prefix="sandbox-control-contract-"))
    work.chmod(0o711)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(work),
        "SANDBOX_API_SECRET": SECRET,
        "SANDBOX_PROVIDER": "local",
        "SANDBOX_DATA_DIR": str(work / "data"),
        "SANDBOX_LOG_LEVEL": "warning",
        "SANDBOX_LOCAL_UID_BASE": str(private_uid_range()["uid_base"]),
        "SANDBOX_LOCAL_UID_COUNT": "1000",
        "SANDBOX_EXEC_DEFAULT_TIMEOUT": "2",
        "SANDBOX_EXEC_MAX_TIMEOUT": "5",
        "SANDBOX_BUILD_TIMEOUT": "10",
        "SANDBOX_POOL_CREATE_CONCURRENCY": "1",
        "SANDBOX_POOL_INTERVAL": "3600",
        "SANDBOX_MAX_TTL_SECONDS": "600",
        "VCS_CLONE_URL_TEMPLATE": "http://127.0.0.1:9/{owner}/{name}.git",
    }
    server = LiveServer(env, free_port(), work / "server.log")
    server.start(60)
    try:
        yield server
    finally:
        _clean(server)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(SECRET.encode())}"}


def _clean(server: LiveServer) -> None:
    """Delete what fuzzing made: pools first (they would refill), then every sandbox."""
    with httpx.Client(base_url=server.url, headers=_auth_headers(), timeout=60) as http:
        for pool in http.get("/v1/pools").json().get("pools", []):
            http.delete(f"/v1/pools/{pool['name']}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listed = http.get("/v1/sandboxes").json().get("sandboxes", [])
            if not listed:
                break
            for sandbox in listed:
                http.delete(f"/v1/sandboxes/{sandbox['id']}")


def _document() -> dict[str, Any]:
    """The service's OpenAPI document, as ``/openapi.json`` serves it (no lifespan needed to build it)."""
    from pydantic import SecretStr

    from app.main import create_app
    from app.settings import Settings

    return create_app(Settings.load(api_secrets=[SecretStr(SECRET)])).openapi()


SCHEMA = schemathesis.openapi.from_dict(_document())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@schemathesis.auth()
class SharedSecretAuth:
    """A fresh bearer token for every request (tokens live ±5 minutes)."""

    def get(self, case: Any, context: Any) -> str:
        return make_token(SECRET.encode())

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    """Fuzzed pools keep target 0 or 1: each member is a real sandbox."""
    operation = getattr(context, "operation", None)
    if operation is not None and operation.path == "/v1/pools/{name}" and isinstance(body, dict):
        target = body.get("target")
        if isinstance(target, int) and not isinstance(target, bool) and target > 1:
            body = {**body, "target": 1}
    return body


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_every_operation_answers_as_documented(operation: Any, contract_server: LiveServer) -> None:
    checks = all_checks()

    @given(case=operation.as_strategy())
    @FUZZ
    def fuzz(case: Any) -> None:
        case.call_and_validate(base_url=contract_server.url, checks=checks, timeout=60)

    fuzz()


STATEFUL = settings(
    max_examples=8,
    stateful_step_count=6,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_stateful_sequences_follow_the_links(contract_server: LiveServer) -> None:
    machine = schemathesis.openapi.from_dict(_document()).as_state_machine()
    checks = all_checks()

    class Sequences(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": contract_server.url, "timeout": 60}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=checks)

    run: Callable[..., None] = Sequences.run
    run(settings=STATEFUL)
