"""The ``modal`` provider: a sandbox is a Modal Sandbox (SDK ``modal``, extra ``[modal]``).

Only the SDK's ``.aio`` interfaces are used, so nothing blocks the event
loop. The SDK is injected (``sdk=``, default: the installed ``modal``
package); tests pass a fake with the same surface that raises the SDK's own
exception types (``tests/fakes_modal.py``).

- Credentials: ``MODAL_TOKEN_ID``/``MODAL_TOKEN_SECRET`` become a ``Client``
  in ``aopen`` (never a module global); the app ``MODAL_APP_NAME`` (in
  ``MODAL_ENVIRONMENT``) is looked up with ``create_if_missing``.
- Create: the spec maps to ``Sandbox.create`` in ``spec.create_plan``;
  each image is resolved (built, or looked up by id) once per process behind
  a per-image lock, and the built object is reused.
- Labels are Modal tags; ``list`` filters by tag. Commands, files and tar
  streams go through ``exec`` (``exec``, ``files``).
- Modal cannot stop and resume a sandbox: ``stop``/``start`` answer 422.
- Extras beyond the ABC: ``snapshot_filesystem`` (a native image id, for repo
  images) and ``port_endpoint`` (a tunnelled port's public URL).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

# Imported here, not lazily: without the extra, the registry's import of this
# module fails and its error says `pip install '.[modal]'`.
import modal as modal_sdk

from app.errors import (
    BadRequest,
    ProviderError,
    ProviderUnavailable,
    SandboxNotFound,
    SandboxNotRunning,
    UnsupportedSpec,
)
from app.locks import KeyedLocks
from app.provider_settings import ModalSettings
from app.providers.base import (
    Capabilities,
    ExecEvent,
    ExecResult,
    Provider,
    ProviderContext,
    ProviderSandbox,
    ProviderStatus,
    SandboxSpec,
)
from app.providers.modal import files
from app.providers.modal.errors import SdkCaller
from app.providers.modal.exec import stream_exec
from app.providers.modal.spec import (
    MANAGED_TAG,
    PROVIDER,
    SCOPE_TAG,
    ModalDefaults,
    create_plan,
    sandbox_from_tags,
    status_of,
)
from app.providers.ports import PortEndpoint
from app.providers.pty import HelperPtyMixin
from app.providers.streaming import collect, once
from app.settings import ConfigError

log = logging.getLogger(__name__)

_REF = re.compile(r"^sb-[A-Za-z0-9_-]{1,64}$")
_HANDLE_CACHE_SIZE = 1024
#: Sandboxes whose tags ``list`` fetches at once.
_LIST_CONCURRENCY = 16
#: Upper bound on sandboxes one ``list`` walks (the SDK pages through them).
_LIST_LIMIT = 10_000
#: Seconds ``snapshot_filesystem`` may take (Modal's default is 55).
SNAPSHOT_TIMEOUT = 300


class ModalProvider(HelperPtyMixin, Provider):
    """Sandboxes as Modal Sandboxes in the app ``MODAL_APP_NAME`` (see the module docstring)."""

    name = PROVIDER
    capabilities = Capabilities(gpu=True, stop_start=False, max_disk_mb=None, networks=frozenset({"host", "none"}))

    def __init__(
        self,
        config: ModalSettings,
        context: ProviderContext,
        *,
        sdk: Any = None,
        defaults: ModalDefaults | None = None,
        retry_base_delay: float = 0.25,
    ) -> None:
        """``sdk``: the ``modal`` module or a stand-in with its ``.aio`` surface.
        ``defaults``: provider-wide create defaults (lifetime, idle timeout, tunnel ports).
        Only sandboxes tagged with ``context.scope`` are created and listed, so
        services sharing an app never reconcile away each other's sandboxes."""
        super().__init__(config, context)
        self._config = config
        self._sdk: Any = sdk if sdk is not None else modal_sdk
        self._defaults = defaults or ModalDefaults.from_config(config, default_ttl_seconds=context.default_ttl_seconds)
        self._scope = context.scope
        self._caller = SdkCaller(self._sdk, base_delay=retry_base_delay)
        self._client: Any = None
        self._app: Any = None
        self._open_lock = asyncio.Lock()
        self._images: dict[str, Any] = {}
        self._image_locks: KeyedLocks[str] = KeyedLocks()
        self._handles: OrderedDict[str, Any] = OrderedDict()

    # -- lifecycle of the provider ------------------------------------------

    async def aopen(self) -> None:
        """Connect and look up the app. Bad credentials fail here; an outage is left to ``ping``."""
        token_id, token_secret = self._config.token_id, self._config.token_secret
        if token_id is None or token_secret is None:
            raise ConfigError("the modal provider needs MODAL_TOKEN_ID and MODAL_TOKEN_SECRET")
        try:
            await self._ready()
        except ProviderUnavailable as exc:
            log.warning("modal provider: Modal not reachable yet: %s", exc)

    async def aclose(self) -> None:
        client, self._client, self._app = self._client, None, None
        self._images.clear()
        self._handles.clear()
        if client is not None:
            try:
                await client.close.aio()
            except Exception as exc:
                log.warning("modal provider: closing the client failed: %s", exc)

    async def _ready(self) -> Any:
        """The app handle, connecting on first use (also after a failed ``aopen``)."""
        if self._app is not None:
            return self._app
        async with self._open_lock:
            if self._app is None:
                config, sdk = self._config, self._sdk
                assert config.token_id is not None and config.token_secret is not None
                token_id = config.token_id.get_secret_value()
                token_secret = config.token_secret.get_secret_value()
                if self._client is None:
                    self._client = await self._caller.call(
                        "connect", lambda: sdk.Client.from_credentials.aio(token_id, token_secret)
                    )
                self._app = await self._caller.call(
                    "App.lookup",
                    lambda: sdk.App.lookup.aio(
                        config.app_name,
                        client=self._client,
                        environment_name=config.environment,
                        create_if_missing=True,
                    ),
                )
        return self._app

    async def ping(self) -> None:
        app = await self._ready()
        await self._list_handles(app, {MANAGED_TAG: "true", SCOPE_TAG: self._scope}, limit=1)

    # -- sandboxes ------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> ProviderSandbox:
        plan = create_plan(spec, self._defaults, base_image=self.context.base_image, scope=self._scope)
        app = await self._ready()
        image = await self._image(plan.image, app)
        sdk, kwargs = self._sdk, dict(plan.kwargs)
        if plan.env:
            # A Secret rather than plain env: spec env carries tokens (VCS, bridge).
            kwargs["secrets"] = [sdk.Secret.from_dict(plan.env)]
        sandbox = await self._caller.call(
            "Sandbox.create",
            lambda: sdk.Sandbox.create.aio(
                *plan.args, app=app, image=image, tags=plan.tags, client=self._client, **kwargs
            ),
        )
        self._remember(sandbox.object_id, sandbox)
        return ProviderSandbox(
            provider_object_id=sandbox.object_id,
            status="running",
            labels=dict(spec.labels),
            image=plan.image,
            created_at=plan.created_at,
            resources=plan.effective,
        )

    async def _image(self, ref: str | None, app: Any) -> Any:
        """The resolved image for ``ref``: built (or looked up) once, then reused.

        The lock is per image, so twenty concurrent creates of one image wait
        for a single build while creates of other images proceed.
        """
        if ref is None:
            return None  # Modal's default image
        cached = self._images.get(ref)
        if cached is not None:
            return cached
        async with self._image_locks.hold(ref):
            cached = self._images.get(ref)
            if cached is None:
                sdk = self._sdk
                # Both constructors are lazy (no I/O); ``build`` resolves the image.
                if ref.startswith("im-"):
                    image = sdk.Image.from_id(ref, client=self._client)
                else:
                    image = sdk.Image.from_registry(ref)
                cached = await self._caller.call("Image.build", lambda: image.build.aio(app), field="image")
                self._images[ref] = cached
        return cached

    async def start(self, ref: str) -> None:
        await self._handle(ref)  # missing -> SandboxNotFound, as everywhere
        raise UnsupportedSpec("start", PROVIDER, "Modal sandboxes cannot be stopped and resumed; use snapshots")

    async def stop(self, ref: str) -> None:
        await self._handle(ref)
        raise UnsupportedSpec("stop", PROVIDER, "Modal sandboxes cannot be stopped and resumed; use snapshots")

    async def delete(self, ref: str) -> None:
        sandbox = await self._live(ref)
        await self._caller.call("terminate", lambda: sandbox.terminate.aio(), ref=ref)
        self._handles.pop(ref, None)

    async def status(self, ref: str) -> ProviderStatus:
        sandbox = await self._handle(ref)
        found = status_of(await self._caller.call("poll", lambda: sandbox.poll.aio(), ref=ref))
        if found is None:
            self._handles.pop(ref, None)
            raise SandboxNotFound(f"Modal sandbox {ref!r} was deleted", ref=ref)
        return found

    async def list(self, labels: Mapping[str, str] | None = None) -> list[ProviderSandbox]:
        app = await self._ready()
        wanted = {**(labels or {}), MANAGED_TAG: "true", SCOPE_TAG: self._scope}
        handles = await self._list_handles(app, wanted, limit=_LIST_LIMIT)
        gate = asyncio.Semaphore(_LIST_CONCURRENCY)

        async def describe(sandbox: Any) -> ProviderSandbox | None:
            status = status_of(sandbox.returncode)
            if status is None:
                return None
            async with gate:
                tags = await self._caller.call("get_tags", lambda: sandbox.get_tags.aio(), ref=sandbox.object_id)
            return sandbox_from_tags(sandbox.object_id, status, tags)

        found = await asyncio.gather(*(describe(s) for s in handles))
        return [s for s in found if s is not None]

    async def _list_handles(self, app: Any, tags: Mapping[str, str], *, limit: int) -> builtins.list[Any]:
        async def collect() -> builtins.list[Any]:
            found: builtins.list[Any] = []
            async for sandbox in self._sdk.Sandbox.list.aio(app_id=app.app_id, tags=dict(tags), client=self._client):
                found.append(sandbox)
                if len(found) >= limit:
                    break
            return found

        return await self._caller.call("Sandbox.list", collect)

    async def _handle(self, ref: str) -> Any:
        """A handle for ``ref`` (cached; the lookup also proves it exists)."""
        if not _REF.match(ref):
            raise SandboxNotFound(f"no Modal sandbox {ref!r}", ref=ref)
        cached = self._handles.get(ref)
        if cached is not None:
            self._handles.move_to_end(ref)
            return cached
        await self._ready()
        sandbox = await self._caller.call(
            "Sandbox.from_id", lambda: self._sdk.Sandbox.from_id.aio(ref, client=self._client), ref=ref
        )
        self._remember(ref, sandbox)
        return sandbox

    async def _live(self, ref: str) -> Any:
        """A handle for a sandbox that was not deleted (running or finished)."""
        sandbox = await self._handle(ref)
        if status_of(await self._caller.call("poll", lambda: sandbox.poll.aio(), ref=ref)) is None:
            self._handles.pop(ref, None)
            raise SandboxNotFound(f"Modal sandbox {ref!r} was deleted", ref=ref)
        return sandbox

    def _remember(self, ref: str, sandbox: Any) -> None:
        self._handles[ref] = sandbox
        while len(self._handles) > _HANDLE_CACHE_SIZE:
            self._handles.popitem(last=False)

    # -- inside a sandbox -----------------------------------------------------

    async def exec(
        self,
        ref: str,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        max_output_bytes: int = 1 << 20,
    ) -> ExecResult:
        events = self.exec_stream(
            ref,
            argv,
            timeout=timeout,
            cwd=cwd,
            env=env,
            stdin=once(stdin) if stdin is not None else None,
            max_output_bytes=max_output_bytes,
        )
        return await collect(events)

    async def exec_stream(
        self,
        ref: str,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: AsyncIterator[bytes] | None = None,
        max_output_bytes: int = 1 << 20,
    ) -> AsyncGenerator[ExecEvent, None]:
        sandbox = await self._handle(ref)
        events = stream_exec(
            self._caller,
            sandbox,
            ref,
            argv,
            timeout=timeout,
            cwd=cwd,
            env=env,
            stdin=stdin,
            max_output_bytes=max_output_bytes,
        )
        try:
            async with aclosing(events):
                async for event in events:
                    yield event
        except SandboxNotRunning:
            if await self.status(ref) == "running":  # raises SandboxNotFound if it was deleted
                raise ProviderError(f"Modal refused an exec in running sandbox {ref!r}", ref=ref) from None
            raise

    def read_file(self, ref: str, path: str) -> AsyncIterator[bytes]:
        return self._stream_out(ref, "read_file", path)

    def export_tar(self, ref: str, path: str) -> AsyncIterator[bytes]:
        return self._stream_out(ref, "export_tar", path)

    async def _stream_out(self, ref: str, what: str, path: str) -> AsyncIterator[bytes]:
        _check_path(path)
        sandbox = await self._handle(ref)
        async for chunk in files.stream_out(self._caller, sandbox, ref, what, path):
            yield chunk

    async def write_file(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        _check_path(path)
        await files.stream_in(self._caller, await self._handle(ref), ref, "write_file", path, data)

    async def import_tar(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        _check_path(path)
        await files.stream_in(self._caller, await self._handle(ref), ref, "import_tar", path, data)

    # -- Modal-only extras (not part of the Provider ABC) ------------------------

    async def snapshot_filesystem(self, ref: str, *, timeout: int = SNAPSHOT_TIMEOUT) -> str:
        """Modal's native filesystem snapshot of ``ref``; returns an image id (``im-…``)
        that ``create(SandboxSpec(image=<id>))`` accepts. For repo images: the
        portable snapshot format stays ``export_tar``."""
        sandbox = await self._handle(ref)
        image = await self._caller.call(
            "snapshot_filesystem", lambda: sandbox.snapshot_filesystem.aio(timeout=timeout), ref=ref
        )
        image_id: str = image.object_id
        return image_id

    async def port_endpoint(self, ref: str, port: int) -> PortEndpoint:
        """The port's Modal tunnel (public HTTPS), which the preview proxy forwards to. The port must
        have been exposed at create time (``ModalDefaults.tunnel_ports`` or the label ``modal.tunnel-ports``)."""
        sandbox = await self._handle(ref)
        tunnels = await self._caller.call("tunnels", lambda: sandbox.tunnels.aio(), ref=ref)
        tunnel = tunnels.get(port)
        if tunnel is None:
            raise BadRequest(
                f"port {port} of {ref} has no tunnel; create the sandbox with the label 'modal.tunnel-ports'",
                field="port",
            )
        return PortEndpoint(url=str(tunnel.url).rstrip("/"), cache_seconds=300.0)


def _check_path(path: str) -> None:
    if not path.startswith("/") or "\0" in path:
        raise BadRequest(f"path must be absolute: {path!r}", field="path")
