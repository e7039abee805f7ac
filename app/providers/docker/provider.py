"""The ``docker`` provider: a sandbox is a container on a Docker Engine.

Containers carry labels in the ``sandbox-control.docker.`` namespace (managed
flag, scope, sandbox id, ttl, requested resources) so ``list`` finds only
ours and the reconciler can rebuild its view after a restart; the spec's own
labels are kept verbatim (``spec``). The entry
command is the spec's (the supervisor) or an idle shell loop; commands run
through the Engine's exec (``exec``), files through the archive API
(``files``); every Engine call goes through ``engine``.

Images are never pulled unless ``SANDBOX_DOCKER_PULL`` says so (``missing``
or ``always``); with the default ``never`` a missing image is a 422 that
names the setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from app.errors import BadRequest, Conflict, ProviderUnavailable, UnsupportedSpec
from app.provider_settings import DockerSettings
from app.providers.base import (
    Capabilities,
    ExecEvent,
    ExecResult,
    ExitEvent,
    Provider,
    ProviderContext,
    ProviderSandbox,
    ProviderStatus,
    SandboxSpec,
)
from app.providers.docker import files
from app.providers.docker.engine import CALL_TIMEOUT, EngineClient, ImageMissing
from app.providers.docker.exec import run_exec, stream_exec
from app.providers.docker.exits import watch as watch_exits
from app.providers.docker.images import commit_container, pull_image, remove_image
from app.providers.docker.ports import port_endpoint as container_port_endpoint
from app.providers.docker.pty import DockerPty
from app.providers.docker.spec import (
    MANAGED_LABEL,
    SANDBOX_ID_LABEL,
    SCOPE_LABEL,
    STOP_GRACE_SECONDS,
    container_config,
    container_name,
    engine_has_gpu,
    sandbox_from_inspect,
    sandbox_from_summary,
    status_of_container,
)
from app.providers.ports import PortEndpoint
from app.providers.terminal import PtySession

log = logging.getLogger(__name__)

_OWNER_CACHE_SIZE = 4096


class DockerProvider(Provider):
    """Sandboxes as containers on the Engine at ``DOCKER_HOST`` (default: the local socket)."""

    name = "docker"

    def __init__(self, config: DockerSettings, context: ProviderContext) -> None:
        """This instance creates, lists and so reconciles only containers labelled with
        ``context.scope``, so several services (or test runs) can share one engine
        without seeing, or deleting, each other's sandboxes."""
        super().__init__(config, context)
        self._config = config
        # One scope per state store (by default), so services sharing an engine never
        # reconcile away each other's sandboxes, while replicas sharing one
        # state store (and so one set of records) share one scope.
        self._scope = context.scope
        self._engine = EngineClient()
        self._info: dict[str, Any] | None = None
        self._owners: dict[str, tuple[int, int]] = {}
        self.capabilities = Capabilities(
            gpu=False,
            stop_start=True,
            max_disk_mb=None,
            networks=None,
            image_commit=True,
            # On the host network every sandbox's env server would claim the same port.
            shared_loopback=config.network == "host",
            exit_events=True,
            # One pid namespace per container: a process in its own session outlives its exec.
            detached_processes=True,
        )
        #: Containers this provider is stopping or deleting: their die is not an exit of their own.
        self._stopping: set[str] = set()

    # -- lifecycle of the provider ------------------------------------------

    async def aopen(self) -> None:
        await self._engine.aopen()
        try:
            await self._engine_info()
        except ProviderUnavailable as exc:
            # Readiness (ping) reports it; the service may start before the engine.
            log.warning("docker provider: engine not reachable yet: %s", exc)

    async def aclose(self) -> None:
        await self._engine.aclose()

    async def ping(self) -> None:
        await self._engine.call("GET", "_ping", timeout=10.0)

    async def _engine_info(self) -> dict[str, Any]:
        if self._info is None:
            info: dict[str, Any] = await self._engine.call("GET", "info")
            self.capabilities = replace(self.capabilities, gpu=engine_has_gpu(info))
            self._info = info
        return self._info

    # -- sandboxes ------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> ProviderSandbox:
        image = spec.image or self.context.base_image
        if not image:
            raise BadRequest(
                "the docker provider needs an image: pass `image` or set SANDBOX_BASE_IMAGE", field="image"
            )
        network = spec.network or self._config.network
        wants_engine_info = spec.resources.disk_mb is not None or spec.resources.gpu is not None
        engine_info = await self._engine_info() if wants_engine_info else None
        config = container_config(spec, image, network, engine_info, scope=self._scope)
        if network not in (None, "host", "none"):
            await self._check_network(network)
        if self._config.pull == "always":
            await pull_image(self._engine, image)
        name = container_name(spec.sandbox_id)
        try:
            created = await self._create_container(name, config)
        except ImageMissing:
            if self._config.pull == "never":
                raise UnsupportedSpec(
                    "image", self.name, f"image {image!r} is not present locally; set SANDBOX_DOCKER_PULL=missing"
                ) from None
            await pull_image(self._engine, image)
            created = await self._create_container(name, config)
        container_id: str = created["Id"]
        try:
            await self._engine.call("POST", f"containers/{container_id}/start", ref=container_id)
            info = await self._inspect(container_id)
        except BaseException as exc:
            await asyncio.shield(self._discard(container_id))
            if isinstance(exc, BadRequest):  # e.g. the entry command does not exist in the image
                raise BadRequest(f"the sandbox could not start: {exc.message}", field="command") from exc
            raise
        return sandbox_from_inspect(info)

    async def _create_container(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        try:
            created: dict[str, Any] = await self._engine.call(
                "POST", "containers/create", params={"name": name}, body=config
            )
        except Conflict as exc:
            raise Conflict(f"a sandbox container named {name!r} already exists", name=name) from exc
        except (BadRequest, ProviderUnavailable) as exc:
            if "storage-opt" in exc.message.lower() or "storage opt" in exc.message.lower():
                raise UnsupportedSpec("resources.disk_mb", self.name, exc.message) from exc
            raise
        return created

    async def _discard(self, container_id: str) -> None:
        """Remove a container that failed to start; never masks the original error."""
        try:
            await self._engine.call("DELETE", f"containers/{container_id}", params={"force": "1", "v": "1"})
        except Exception as exc:
            log.warning("docker provider: could not remove failed container %s: %s", container_id, exc)

    async def _check_network(self, network: str) -> None:
        try:
            await self._engine.call("GET", f"networks/{network}")
        except (BadRequest, LookupError) as exc:
            raise BadRequest(
                f"network {network!r} does not exist on the Docker Engine "
                f"(create it with `docker network create {network}`, or use 'host' or 'none')",
                field="network",
            ) from exc

    # -- native images (repo images) -----------------------------------------

    async def commit_image(self, ref: str, name: str) -> str:
        """``docker commit`` with the base image's configuration (``images.commit_container``)."""
        await commit_container(self._engine, ref, await self._inspect(ref), name)
        return name

    async def delete_image(self, image: str) -> bool:
        return await remove_image(self._engine, image)

    async def _inspect(self, ref: str) -> dict[str, Any]:
        info: dict[str, Any] = await self._engine.call("GET", f"containers/{ref}/json", ref=ref)
        return info

    async def port_endpoint(self, ref: str, port: int) -> PortEndpoint:
        """From the container's inspect (``docker.ports``): its address, the host's loopback or its namespace."""
        return container_port_endpoint(await self._inspect(ref), port)

    async def start(self, ref: str) -> None:
        await self._engine.call("POST", f"containers/{ref}/start", ref=ref)

    async def stop(self, ref: str) -> None:
        with self._ending(ref):
            await self._engine.call(
                "POST",
                f"containers/{ref}/stop",
                params={"t": str(STOP_GRACE_SECONDS)},
                ref=ref,
                timeout=STOP_GRACE_SECONDS + CALL_TIMEOUT,
            )

    @contextlib.contextmanager
    def _ending(self, ref: str) -> Iterator[None]:
        """Mark ``ref`` as being ended by us while the block runs (and a little after: events lag)."""
        self._stopping.add(ref)
        try:
            yield
        finally:
            asyncio.get_running_loop().call_later(5.0, self._stopping.discard, ref)

    def watch_exits(self) -> AsyncIterator[ExitEvent]:
        """Containers whose entry command ended on its own, from the Engine's ``die`` events."""
        labels = [f"{MANAGED_LABEL}=true", *([f"{SCOPE_LABEL}={self._scope}"] if self._scope else [])]
        return watch_exits(self._engine, labels, lambda container: any(container.startswith(r) for r in self._stopping))

    async def delete(self, ref: str) -> None:
        try:
            with self._ending(ref):
                await self._engine.call(
                    "DELETE",
                    f"containers/{ref}",
                    params={"force": "1", "v": "1"},
                    ref=ref,
                    timeout=STOP_GRACE_SECONDS + CALL_TIMEOUT,
                )
        except Conflict as exc:
            if "already in progress" not in exc.message:
                raise

    async def status(self, ref: str) -> ProviderStatus:
        return status_of_container(await self._inspect(ref))

    async def list(self, labels: Mapping[str, str] | None = None) -> list[ProviderSandbox]:
        wanted = [f"{MANAGED_LABEL}=true", *(f"{key}={value}" for key, value in (labels or {}).items())]
        if self._scope:
            wanted.append(f"{SCOPE_LABEL}={self._scope}")
        found = await self._engine.call(
            "GET", "containers/json", params={"all": "1", "filters": json.dumps({"label": wanted})}
        )
        return [sandbox_from_summary(item) for item in found]

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
        return await run_exec(
            self._engine,
            ref,
            argv,
            timeout=timeout,
            cwd=cwd,
            env=env,
            stdin=stdin,
            max_output_bytes=max_output_bytes,
        )

    def exec_stream(
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
        return stream_exec(
            self._engine,
            ref,
            argv,
            timeout=timeout,
            cwd=cwd,
            env=env,
            stdin=stdin,
            max_output_bytes=max_output_bytes,
        )

    def open_pty(
        self,
        ref: str,
        argv: Sequence[str],
        *,
        cols: int,
        rows: int,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> PtySession:
        """The Engine's own terminal (an exec with ``Tty``); no helper needed in the image."""
        return DockerPty(self._engine, ref, argv, cols=cols, rows=rows, timeout=timeout, cwd=cwd, env=env)

    def read_file(self, ref: str, path: str) -> AsyncIterator[bytes]:
        return files.read_file(self._engine, ref, path)

    async def write_file(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        owner = await self._owner(ref)
        await files.write_file(self._engine, ref, path, data, owner=owner, make_dirs=self._make_dirs)

    def export_tar(self, ref: str, path: str) -> AsyncIterator[bytes]:
        return files.export_tar(self._engine, ref, path)

    async def import_tar(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        owner = await self._owner(ref)
        await files.import_tar(self._engine, ref, path, data, owner=owner, make_dirs=self._make_dirs)

    async def _owner(self, ref: str) -> tuple[int, int]:
        """The container user's (uid, gid), cached: a container's user never changes."""
        owner = self._owners.get(ref)
        if owner is None:
            owner = await files.container_owner(self._engine, ref)
            if len(self._owners) >= _OWNER_CACHE_SIZE:
                self._owners.clear()
            self._owners[ref] = owner
        return owner

    async def _make_dirs(self, ref: str, path: str) -> None:
        """``mkdir -p`` as the container's user, so it owns what it did not have."""
        result = await run_exec(
            self._engine,
            ref,
            ["mkdir", "-p", "--", path],
            timeout=CALL_TIMEOUT,
            cwd=None,
            env=None,
            stdin=None,
            max_output_bytes=4096,
        )
        if result.exit_code != 0:
            message = result.stderr.decode(errors="replace").strip() or f"mkdir exited {result.exit_code}"
            kind = PermissionError if "denied" in message.lower() else OSError
            raise kind(errno.EACCES if kind is PermissionError else errno.EIO, message, path)


__all__ = ["MANAGED_LABEL", "SANDBOX_ID_LABEL", "DockerProvider"]
