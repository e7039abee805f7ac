"""The ``kubernetes`` provider: a sandbox is a Pod with a PersistentVolumeClaim for ``/workspace``.

One namespace holds every sandbox object; names, labels and annotations
are in ``names``, manifests in ``spec``, statuses in ``status``, the API
boundary in ``client``, commands in ``exec`` and files in ``files``.

Lifecycle:

* ``create``: NetworkPolicy first (``network: "none"``, so the pod never runs
  unprotected), then the PVC (carrying the pod's template), then the pod;
  returns once the container runs (or has already ended). A create that
  fails or is cancelled removes what it made.
* ``stop`` deletes the pod (SIGTERM, the grace period, SIGKILL) and waits
  until it is gone; the PVC and its files stay. ``start`` recreates the pod
  from the template on the PVC. Everything outside ``/workspace`` starts
  fresh, as a new container does.
* ``delete`` removes pod, PVC and policy.

The PVC is the sandbox's lasting identity: ``list`` and ``status`` read PVCs
and pods with one label selector each, so a stopped sandbox is listed too.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing, asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection

from app.errors import BadRequest, ProviderError, SandboxNotFound, SandboxNotRunning, UnsupportedSpec
from app.locks import KeyedLocks
from app.provider_settings import KubernetesSettings
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
from app.providers.kubernetes import files
from app.providers.kubernetes.client import ApiNotFound, ApiRejected, KubeApi
from app.providers.kubernetes.config import ClusterConfig, load_cluster
from app.providers.kubernetes.exec import ExecChannel, ExecInterrupted, PodExecutor
from app.providers.kubernetes.names import is_object_name, label_selector, matches, object_name
from app.providers.kubernetes.objects import Objects, kinds, poll_until
from app.providers.kubernetes.ports import port_endpoint as pod_port_endpoint
from app.providers.kubernetes.spec import CONTAINER, PROVIDER, WORKSPACE, plan_sandbox, pod_from_template
from app.providers.kubernetes.status import describe, is_ready, pod_status, terminating, unschedulable, waiting_problem
from app.providers.ports import PortEndpoint
from app.providers.pty import HelperPtyMixin

log = logging.getLogger(__name__)

#: Seconds beyond the grace period a deleted pod may take to disappear.
GONE_MARGIN_SECONDS = 60.0


class KubernetesProvider(HelperPtyMixin, Provider):
    """Sandboxes as pods in one namespace of a cluster (see the module docstring)."""

    name = PROVIDER

    def __init__(
        self, config: KubernetesSettings, context: ProviderContext, *, cluster: ClusterConfig | None = None
    ) -> None:
        """``cluster`` overrides where the API server is (default: ``config``'s kubeconfig or in-cluster)."""
        super().__init__(config, context)
        self._config = config
        self._context = context
        self._cluster = cluster
        self._api: KubeApi | None = None
        self._locks: KeyedLocks[str] = KeyedLocks()
        self.capabilities = Capabilities(
            # Extended resources: the scheduler places the pod on a node that has the device.
            gpu=True,
            stop_start=True,
            max_disk_mb=None,
            networks=frozenset({"host", "none"}),
            shared_loopback=False,
            image_commit=False,
        )

    # -- lifecycle of the provider --------------------------------------------

    async def aopen(self) -> None:
        """Read the kubeconfig (or the service account) once; no request yet (readiness is ``ping``)."""
        if self._api is not None:
            return
        cluster = self._cluster if self._cluster is not None else await asyncio.to_thread(load_cluster, self._config)
        api = KubeApi(
            cluster,
            timeout=self._config.request_timeout,
            attempts=self._config.request_attempts,
            backoff=self._config.retry_backoff,
        )
        gone = self._config.stop_grace_seconds + GONE_MARGIN_SECONDS
        pods, pvcs, policies = kinds(self._config.namespace)
        self._pods = Objects(api, pods, self._context.scope, gone_timeout=gone)
        self._pvcs = Objects(api, pvcs, self._context.scope, gone_timeout=gone)
        self._policies = Objects(api, policies, self._context.scope, gone_timeout=gone)
        self._exec = PodExecutor(self._connect, CONTAINER)
        self._api = api
        log.info("kubernetes provider: %s, namespace %s", cluster.source, self._config.namespace)

    async def aclose(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            await asyncio.shield(api.aclose())

    def _opened(self) -> KubeApi:
        if self._api is None:
            raise ProviderError("kubernetes provider used before aopen()")
        return self._api

    async def ping(self) -> None:
        """One cheap authorised list: reachability, credentials and RBAC at once."""
        api = self._opened()
        params = {"labelSelector": label_selector(self._context.scope), "limit": "1"}
        await api.request("GET", self._pods.kind.path, what="list pods", params=params)

    def _name(self, ref: str) -> str:
        if not is_object_name(ref):
            raise SandboxNotFound(f"kubernetes sandbox {ref} not found", ref=ref)
        self._opened()
        return ref

    # -- sandboxes ----------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> ProviderSandbox:
        self._opened()
        image = spec.image or self._config.image or self._context.base_image
        if not image:
            raise BadRequest(
                "the kubernetes provider needs an image: pass `image` or set SANDBOX_K8S_IMAGE or SANDBOX_BASE_IMAGE",
                field="image",
            )
        name = object_name(self._context.scope, spec.sandbox_id)
        plan = plan_sandbox(
            spec, name=name, scope=self._context.scope, image=image, config=self._config, token=secrets.token_hex(8)
        )
        made: list[Objects] = []
        async with self._locks.hold(name):
            try:
                if plan.policy is not None:
                    await self._policies.create(plan.policy)
                    made.append(self._policies)
                pvc = await self._pvcs.create(plan.pvc)
                made.append(self._pvcs)
                pod = await self._pods.create(plan.pod)
                made.append(self._pods)
                pod = await self._wait_started(name, pod, spec)
            except BaseException:
                # Only what this call made: a conflicting object is someone else's to remove.
                await asyncio.shield(self._remove_quietly(name, made))
                raise
        return describe(pvc, pod)

    async def _wait_started(self, name: str, pod: dict[str, Any], spec: SandboxSpec | None = None) -> dict[str, Any]:
        """Wait until the container runs or has ended; refuse pods that cannot start."""
        latest = pod

        async def started() -> bool:
            nonlocal latest
            found = await self._pods.get(name)
            if found is None or terminating(found):
                raise ProviderError(f"sandbox pod {name} disappeared while starting", ref=name)
            latest = found
            problem = waiting_problem(found)
            if problem:
                field = "image" if "Image" in problem else "command"
                raise BadRequest(f"the sandbox pod cannot start: {problem}", field=field)
            return is_ready(found) or pod_status(found)[0] != "running"

        if await poll_until(started, timeout=self._config.start_timeout):
            return latest
        reason = unschedulable(latest) or pod_status(latest)[1] or "still pending"
        gpu = spec.resources.gpu if spec is not None else None
        if gpu is not None and (self._config.gpu_resource in reason or (gpu != "any" and "selector" in reason)):
            raise UnsupportedSpec("resources.gpu", PROVIDER, f"no node can take the pod: {reason}")
        raise ProviderError(f"sandbox pod {name} did not start within {self._config.start_timeout:.0f} s: {reason}")

    async def _remove(self, name: str) -> bool:
        """Delete pod, PVC and policy (pod first: the policy outlives what it protects)."""
        removed = await self._pods.delete(name, grace_seconds=0)
        removed = await self._pvcs.delete(name) or removed
        return await self._policies.delete(name) or removed

    async def _remove_quietly(self, name: str, made: list[Objects]) -> None:
        try:
            for objects in reversed(made):  # pod first, policy last
                await objects.delete(name, grace_seconds=0 if objects is self._pods else None)
        except Exception as exc:  # the reconciler deletes leftovers later
            log.warning("kubernetes provider: could not remove %s after a failed create: %s", name, exc)

    async def start(self, ref: str) -> None:
        name = self._name(ref)
        async with self._locks.hold(name):
            pod = await self._pods.get(name)
            if pod is not None and not terminating(pod) and pod_status(pod)[0] == "running":
                await self._wait_started(name, pod)
                return
            pvc = await self._pvcs.get(name)
            if pvc is None or terminating(pvc):
                raise SandboxNotFound(f"kubernetes sandbox {ref} not found", ref=ref)
            if pod is not None:  # ended (failed, completed) or still terminating: replace it
                if not terminating(pod):
                    await self._pods.delete(name)
                await self._pods.wait_gone(name)
            template = pod_from_template(pvc)
            if template is None:
                raise ProviderError(f"sandbox {ref}: its PVC holds no pod template to start from", ref=ref)
            await self._wait_started(name, await self._pods.create(template))

    async def stop(self, ref: str) -> None:
        name = self._name(ref)
        async with self._locks.hold(name):
            pod = await self._pods.get(name)
            if pod is None:
                pvc = await self._pvcs.get(name)
                if pvc is None or terminating(pvc):
                    raise SandboxNotFound(f"kubernetes sandbox {ref} not found", ref=ref)
                return
            if not terminating(pod):
                await self._pods.delete(name, grace_seconds=self._config.stop_grace_seconds)
            await self._pods.wait_gone(name)

    async def delete(self, ref: str) -> None:
        name = self._name(ref)
        async with self._locks.hold(name):
            pvc, pod = await asyncio.gather(self._pvcs.get(name), self._pods.get(name))
            if pvc is None and pod is None and await self._policies.get(name) is None:
                raise SandboxNotFound(f"kubernetes sandbox {ref} not found", ref=ref)
            await self._remove(name)

    async def status(self, ref: str) -> ProviderStatus:
        return (await self.inspect(ref)).status

    async def inspect(self, ref: str) -> ProviderSandbox:
        """The sandbox with its status and the reason for it (``status_reason``)."""
        name = self._name(ref)
        pod, pvc = await asyncio.gather(self._pods.get(name), self._pvcs.get(name))
        if pvc is None or terminating(pvc):
            if pod is None or terminating(pod):
                raise SandboxNotFound(f"kubernetes sandbox {ref} not found", ref=ref)
            pvc = None
        return describe(pvc, pod)

    async def port_endpoint(self, ref: str, port: int) -> PortEndpoint:
        """The pod's IP (``kubernetes.ports``)."""
        return pod_port_endpoint(await self._pods.get(self._name(ref)), ref, port)

    async def list(self, labels: Mapping[str, str] | None = None) -> list[ProviderSandbox]:
        self._opened()
        selector = label_selector(self._context.scope, labels)
        pvcs, pods = await asyncio.gather(self._pvcs.list(selector), self._pods.list(selector))
        by_name = {str(pod["metadata"]["name"]): pod for pod in pods}
        found: builtins.list[ProviderSandbox] = []
        for pvc in pvcs:
            pod = by_name.pop(str(pvc["metadata"]["name"]), None)
            if not terminating(pvc) and matches(pvc, labels):
                found.append(describe(pvc, pod))
        # A pod without its PVC: a delete half done; listed so it can be deleted again.
        found += [describe(None, pod) for pod in by_name.values() if not terminating(pod) and matches(pod, labels)]
        return found

    # -- inside a sandbox -----------------------------------------------------

    @asynccontextmanager
    async def _connect(
        self, pod: str, query: builtins.list[tuple[str, str]], protocols: Sequence[str]
    ) -> AsyncIterator[ClientConnection]:
        """Open ``pods/exec`` of ``pod``, telling a missing sandbox from a stopped one."""
        api = self._opened()
        async with AsyncExitStack() as stack:
            try:
                socket = api.websocket(f"{self._pods.kind.item(pod)}/exec", query, protocols, what=f"exec in {pod}")
                connection = await stack.enter_async_context(socket)
            except ApiNotFound as exc:
                raise await self._not_running(pod) from exc
            except ApiRejected as exc:
                if exc.status == 400:  # "container not found", "cannot exec into a completed pod"...
                    raise SandboxNotRunning(f"sandbox {pod} is not running: {exc.message}", ref=pod) from exc
                raise
            yield connection

    async def _not_running(self, name: str) -> SandboxNotFound | SandboxNotRunning:
        """The error for a sandbox whose pod cannot run commands: stopped, or gone altogether."""
        pvc = await self._pvcs.get(name)
        if pvc is None or terminating(pvc):
            return SandboxNotFound(f"kubernetes sandbox {name} not found", ref=name)
        return SandboxNotRunning(f"sandbox {name} is not running", ref=name)

    def _open_command(self, name: str) -> files.OpenCommand:
        def open_command(argv: builtins.list[str], *, stdin: bool) -> AbstractAsyncContextManager[ExecChannel]:
            return self._exec.open(name, argv, stdin=stdin)

        return open_command

    async def _broken_stream(self, name: str, exc: ExecInterrupted) -> Exception:
        """A stream that broke off: the sandbox stopped (or vanished) meanwhile, or the link failed."""
        pod = await self._pods.get(name)
        if pod is None or not is_ready(pod):
            return await self._not_running(name)
        return exc

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
        name = self._name(ref)
        try:
            return await self._exec.run(
                name,
                argv,
                timeout=timeout,
                cwd=cwd or WORKSPACE,
                env=env,
                stdin=stdin,
                max_output_bytes=max_output_bytes,
            )
        except ExecInterrupted as exc:
            raise await self._broken_stream(name, exc) from exc

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
        name = self._name(ref)
        events = self._exec.stream(
            name, argv, timeout=timeout, cwd=cwd or WORKSPACE, env=env, stdin=stdin, max_output_bytes=max_output_bytes
        )
        try:
            async with aclosing(events):
                async for event in events:
                    yield event
        except ExecInterrupted as exc:
            raise await self._broken_stream(name, exc) from exc

    async def _read(self, ref: str, path: str, script: str, *, tar: bool) -> AsyncIterator[bytes]:
        name = self._name(ref)
        try:
            async for chunk in files.stream_out(self._open_command(name), script, path, tar=tar):
                yield chunk
        except ExecInterrupted as exc:
            raise await self._broken_stream(name, exc) from exc

    def read_file(self, ref: str, path: str) -> AsyncIterator[bytes]:
        return self._read(ref, path, files.READ_FILE, tar=False)

    def export_tar(self, ref: str, path: str) -> AsyncIterator[bytes]:
        return self._read(ref, path, files.EXPORT_TAR, tar=True)

    async def _write(self, ref: str, path: str, script: str, data: AsyncIterator[bytes]) -> None:
        name = self._name(ref)
        try:
            await files.stream_in(self._open_command(name), script, path, data)
        except ExecInterrupted as exc:
            raise await self._broken_stream(name, exc) from exc

    async def write_file(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        await self._write(ref, path, files.WRITE_FILE, data)

    async def import_tar(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        await self._write(ref, path, files.IMPORT_TAR, data)
