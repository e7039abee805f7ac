"""The namespace's pods, PVCs and network policies, as the provider uses them.

Creating resolves a 409 instead of failing on it: the name is deterministic,
so a 409 means one of three things, told apart by reading the object:

* it vanished meanwhile (or the 409 was transient): create again;
* it is our own earlier attempt (same create token; its answer was lost): adopt it;
* it is being deleted (a ``start`` right after ``stop``): wait until it is gone, create again.

Anything else (a live object of another sandbox, or of an earlier life of
this one that was never cleaned up) is a real ``Conflict``. Waits poll with
a growing interval (20 ms to 1 s): pods start in seconds and a watch per
call would cost a connection for little.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.errors import Conflict, ProviderUnavailable
from app.providers.kubernetes.client import ApiConflict, ApiNotFound, KubeApi
from app.providers.kubernetes.names import CREATE_TOKEN_ANNOTATION, owned_by
from app.providers.kubernetes.status import metadata, terminating

#: Creates of one object (first included) before a persistent 409 is given up on.
CREATE_ATTEMPTS = 6
#: Polling interval bounds of every wait, seconds.
POLL_MIN, POLL_MAX = 0.02, 1.0


@dataclass(frozen=True)
class Kind:
    """One kind of object: its collection path and a name for messages."""

    path: str
    label: str

    def item(self, name: str) -> str:
        return f"{self.path}/{name}"


def kinds(namespace: str) -> tuple[Kind, Kind, Kind]:
    """Pods, PVCs and network policies of ``namespace``."""
    core = f"/api/v1/namespaces/{namespace}"
    return (
        Kind(f"{core}/pods", "pod"),
        Kind(f"{core}/persistentvolumeclaims", "persistentvolumeclaim"),
        Kind(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies", "networkpolicy"),
    )


async def poll_until(check: Callable[[], Awaitable[bool]], *, timeout: float, poll_max: float = POLL_MAX) -> bool:
    """Call ``check`` with a growing interval until it is true (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    delay = POLL_MIN
    while True:
        if await check():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, poll_max)


class Objects:
    """CRUD of one kind of object in the namespace, for this provider instance's scope."""

    def __init__(self, api: KubeApi, kind: Kind, scope: str, *, gone_timeout: float) -> None:
        self.api = api
        self.kind = kind
        self.scope = scope
        self.gone_timeout = gone_timeout

    async def get(self, name: str) -> dict[str, Any] | None:
        """Our object ``name``, or ``None`` (absent, or not this scope's)."""
        found = await self.api.get_or_none(self.kind.item(name), what=f"get {self.kind.label} {name}")
        return found if found is not None and owned_by(found, self.scope) else None

    async def list(self, selector: str) -> list[dict[str, Any]]:
        return await self.api.list_all(self.kind.path, what=f"list {self.kind.label}s", selector=selector)

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create ``manifest``, resolving a 409 (see the module docstring)."""
        name = str(manifest["metadata"]["name"])
        token = (manifest["metadata"].get("annotations") or {}).get(CREATE_TOKEN_ANNOTATION)
        what = f"create {self.kind.label} {name}"
        for _ in range(CREATE_ATTEMPTS):
            try:
                return await self.api.request("POST", self.kind.path, what=what, body=manifest)
            except ApiConflict as conflict:
                existing = await self.api.get_or_none(self.kind.item(name), what=f"get {self.kind.label} {name}")
                if existing is None:
                    continue
                if not owned_by(existing, self.scope):
                    raise Conflict(f"a {self.kind.label} named {name!r} exists and is not ours", name=name) from None
                if terminating(existing):
                    await self.wait_gone(name)
                    continue
                if token and (metadata(existing).get("annotations") or {}).get(CREATE_TOKEN_ANNOTATION) == token:
                    return existing
                raise Conflict(f"a sandbox {self.kind.label} named {name!r} already exists", name=name) from conflict
        raise ProviderUnavailable(f"kubernetes kept answering 409 to {what}", name=name)

    async def delete(self, name: str, *, grace_seconds: int | None = None) -> bool:
        """Ask for deletion; False when the object did not exist."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            await self.api.request("DELETE", self.kind.item(name), what=f"delete {self.kind.label} {name}", body=body)
        except ApiNotFound:
            return False
        return True

    async def wait_gone(self, name: str, timeout: float | None = None) -> None:
        """Wait until the object no longer exists (``ProviderUnavailable`` past the timeout)."""
        limit = self.gone_timeout if timeout is None else timeout

        async def gone() -> bool:
            return await self.api.get_or_none(self.kind.item(name), what=f"get {self.kind.label} {name}") is None

        if not await poll_until(gone, timeout=limit):
            raise ProviderUnavailable(f"{self.kind.label} {name} was still being deleted after {limit:.0f} s")
