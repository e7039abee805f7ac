"""The ``daytona`` provider: a sandbox is a Daytona sandbox, driven by the async SDK.

Lifecycle calls go through ``AsyncDaytona`` and ``AsyncSandbox``; every call
passes the error boundary of ``errors`` (auth fails fast, transient
trouble is retried with backoff, 404 is ``SandboxNotFound``). The spec is
mapped in one place (``spec.create_params``); commands run under the wrappers
of ``exec`` (one-shot) and ``live`` (streamed); files and tars through ``files``.

Sandboxes carry labels under ``sandbox-control.`` (managed flag, scope,
sandbox id, entry flag), so ``list`` sees only this service's sandboxes, in
every state: stopped and archived ones too, which is what lets a caller find
a task's sandbox again and resume it (``resume_or_create``).

The entry command (the supervisor) runs in a background Daytona session, not
as PID 1 (Daytona's daemon is); ``start`` relaunches it, ``stop`` asks it to
end (SIGTERM, grace) before Daytona stops the machine, and a sandbox whose
entry command ended reads as ``failed`` (non-zero) or ``stopped`` (zero).

A sandbox in Daytona's ``error`` state is never reused as is: ``start``
recovers it when Daytona marks it recoverable and raises ``ProviderError``
otherwise; ``resume_or_create`` then deletes it and creates a replacement.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import Any, TypeVar

from daytona import AsyncDaytona, DaytonaConfig, ListSandboxesQuery

from app.errors import ProviderAuthError, ProviderError, SandboxNotFound, SandboxNotRunning
from app.provider_settings import DaytonaSettings
from app.providers.base import (
    Capabilities,
    ExecEvent,
    ExecResult,
    Provider,
    ProviderContext,
    ProviderSandbox,
    ProviderStatus,
    SandboxSpec,
    check_argv,
)
from app.providers.daytona.entry import EntryCommand
from app.providers.daytona.errors import DEFAULT_ATTEMPTS, DaytonaCalls, DaytonaConflict, translate
from app.providers.daytona.exec import WORKSPACE, check_exec_args, exec_script, parse_exec_output
from app.providers.daytona.files import DaytonaFiles
from app.providers.daytona.live import live_exec
from app.providers.daytona.ports import PortEndpoint, preview_endpoint
from app.providers.daytona.spec import (
    ENTRY_LABEL,
    GONE,
    MANAGED_LABEL,
    SCOPE_LABEL,
    DaytonaDefaults,
    create_params,
    describe,
    sandbox_name,
    state_name,
    status_of_state,
)
from app.providers.pty import HelperPtyMixin
from app.providers.streaming import once

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds a start, stop or recover may take.
LIFECYCLE_TIMEOUT = 120.0
#: Extra seconds the client waits beyond an exec's own timeout (network, wrapper).
EXEC_GRACE_SECONDS = 15.0
#: Upper bound of sandboxes one ``list`` returns (pages are followed up to it).
LIST_LIMIT = 10_000


class DaytonaProvider(HelperPtyMixin, Provider):
    """Sandboxes on a Daytona control plane (see the module docstring)."""

    name = "daytona"

    def __init__(
        self,
        config: DaytonaSettings,
        context: ProviderContext,
        *,
        defaults: DaytonaDefaults | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_base: float | None = None,
        exec_grace: float = EXEC_GRACE_SECONDS,
    ) -> None:
        """``context.scope`` tags and filters this service's sandboxes;
        ``attempts``/``backoff_base`` bound retries; ``exec_grace`` is how long
        past an exec's timeout the client still waits."""
        super().__init__(config, context)
        self._config = config
        self._scope = context.scope
        self._defaults = defaults or DaytonaDefaults()
        self._calls = DaytonaCalls(attempts=attempts, **({"backoff_base": backoff_base} if backoff_base else {}))
        self._exec_grace = exec_grace
        self._client: AsyncDaytona | None = None
        self._files = DaytonaFiles(self._calls, self._running_sandbox, self.exec)
        self._entry = EntryCommand(self._calls)
        self.capabilities = Capabilities(
            gpu=True,  # the SDK passes gpu count and type; availability depends on the organisation
            stop_start=True,
            max_disk_mb=self._defaults.max_disk_gib * 1024,
            networks=frozenset({"host", "none"}),
        )

    # -- lifecycle of the provider --------------------------------------------

    async def aopen(self) -> None:
        """Build the SDK client (no request yet: readiness is ``ping``)."""
        if self._client is not None:
            return
        key = self._config.api_key
        if key is None or not key.get_secret_value():
            raise ProviderAuthError("the daytona provider needs DAYTONA_API_KEY")
        config = DaytonaConfig(
            api_key=key.get_secret_value(),
            api_url=self._config.api_url,
            target=self._config.target,
        )
        self._client = AsyncDaytona(config)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.shield(client.close())  # type: ignore[no-untyped-call]

    def _opened(self) -> AsyncDaytona:
        if self._client is None:
            raise ProviderError("daytona provider used before aopen()")
        return self._client

    # -- sandboxes ----------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> ProviderSandbox:
        """Create, wait until started, prepare /workspace, launch the entry command."""
        plan = create_params(spec, base_image=self.context.base_image, scope=self._scope, defaults=self._defaults)
        client = self._opened()
        timeout = self._defaults.create_timeout
        try:
            sandbox = await self._calls.call("create", lambda: client.create(plan.params, timeout=timeout))
        except DaytonaConflict:
            # A retried create whose first try reached Daytona: adopt that sandbox.
            sandbox = await self._get(sandbox_name(self._scope, spec.sandbox_id))
            if state_name(sandbox) != "started":
                await self._calls.call("start", lambda: sandbox.start(timeout=LIFECYCLE_TIMEOUT), ref=sandbox.id)
        try:
            await self._entry.prepare(sandbox, spec.command)
            if spec.command is not None:
                await self._entry.launch(sandbox)
        except BaseException:
            await asyncio.shield(self._discard(sandbox))
            raise
        return describe(sandbox, "running", plan.image)

    async def _discard(self, sandbox: Any) -> None:
        """Delete a sandbox whose create failed half-way; never masks the original error."""
        try:
            await self._calls.call("delete", lambda: sandbox.delete(), ref=sandbox.id)
        except Exception as exc:
            log.warning("daytona provider: could not delete half-created sandbox %s: %s", sandbox.id, exc)

    async def _get(self, ref: str) -> Any:
        """The SDK sandbox ``ref`` if it exists and is ours, else ``SandboxNotFound``."""
        client = self._opened()
        sandbox = await self._calls.call("get", lambda: client.get(ref), ref=ref)
        labels = sandbox.labels or {}
        if state_name(sandbox) in GONE or labels.get(MANAGED_LABEL) != "true" or labels.get(SCOPE_LABEL) != self._scope:
            raise SandboxNotFound(f"daytona sandbox {ref} not found", ref=ref)
        return sandbox

    async def _status(self, sandbox: Any) -> ProviderStatus:
        status = status_of_state(state_name(sandbox))
        if status == "running" and state_name(sandbox) == "started" and (sandbox.labels or {}).get(ENTRY_LABEL):
            code = await self._entry.exit_code(sandbox)
            if code is not None:
                return "stopped" if code == 0 else "failed"
        return status

    async def _running_sandbox(self, ref: str) -> Any:
        """The SDK sandbox of a running ``ref``; ``SandboxNotRunning`` otherwise."""
        sandbox = await self._get(ref)
        status = await self._status(sandbox)
        if status != "running":
            raise SandboxNotRunning(f"daytona sandbox {ref} is {status}", ref=ref)
        return sandbox

    async def port_endpoint(self, ref: str, port: int) -> PortEndpoint:
        """Daytona's own preview link of the port, proxied with its token (``daytona.ports``)."""
        return await preview_endpoint(self._calls, await self._running_sandbox(ref), port)

    async def start(self, ref: str) -> None:
        """Start (or recover) the sandbox and relaunch its entry command if that is not running."""
        sandbox = await self._get(ref)
        state = state_name(sandbox)
        if state in ("error", "build_failed"):
            if state == "error" and getattr(sandbox, "recoverable", False):
                log.info("daytona provider: recovering sandbox %s from its error state", ref)
                await self._calls.call("recover", lambda: sandbox.recover(timeout=LIFECYCLE_TIMEOUT), ref=ref)
            else:
                reason = getattr(sandbox, "error_reason", None) or state
                raise ProviderError(f"daytona sandbox {ref} failed and cannot be recovered: {reason}", ref=ref)
        elif state != "started":
            await self._calls.call("start", lambda: sandbox.start(timeout=LIFECYCLE_TIMEOUT), ref=ref)
        if (sandbox.labels or {}).get(ENTRY_LABEL) and await self._entry.exit_code(sandbox) is not None:
            await self._entry.launch(sandbox)

    async def stop(self, ref: str) -> None:
        """Give the entry command SIGTERM and a grace period, then stop the machine."""
        sandbox = await self._get(ref)
        state = state_name(sandbox)
        if status_of_state(state) == "stopped" and state not in ("stopping", "pausing", "archiving"):
            return
        if state == "started" and (sandbox.labels or {}).get(ENTRY_LABEL):
            await self._entry.end(sandbox)
        await self._calls.call("stop", lambda: sandbox.stop(timeout=LIFECYCLE_TIMEOUT), ref=ref)

    async def delete(self, ref: str) -> None:
        """Delete the sandbox (Daytona finishes asynchronously; it reads as gone at once)."""
        sandbox = await self._get(ref)
        await self._calls.call("delete", lambda: sandbox.delete(timeout=LIFECYCLE_TIMEOUT), ref=ref)

    async def status(self, ref: str) -> ProviderStatus:
        """Daytona's state, refined by the entry command's (see the module docstring)."""
        return await self._status(await self._get(ref))

    async def list(self, labels: Mapping[str, str] | None = None) -> list[ProviderSandbox]:
        """Our sandboxes whose labels include ``labels``, in every state but destroyed.

        The status is Daytona's state alone (an ended entry command shows in ``status``).
        """
        client = self._opened()
        query = ListSandboxesQuery(labels={**(labels or {}), MANAGED_LABEL: "true", SCOPE_LABEL: self._scope})

        async def collect() -> list[Any]:
            found: list[Any] = []
            async for item in client.list(query):
                found.append(item)
                if len(found) >= LIST_LIMIT:
                    log.warning("daytona provider: list stopped at %d sandboxes", LIST_LIMIT)
                    break
            return found

        found = await self._calls.call("list", collect)
        wanted = dict(labels or {})
        return [
            describe(item, status_of_state(state_name(item)))
            for item in found
            if state_name(item) not in GONE and wanted.items() <= dict(item.labels or {}).items()
        ]

    async def resume_or_create(self, spec: SandboxSpec, match: Mapping[str, str]) -> ProviderSandbox:
        """The sandbox labelled ``match`` resumed (started or recovered), else a new one from ``spec``.

        How the service resumes a task: pass the task's labels as ``match`` (and
        in ``spec.labels``). A running one is returned, a stopped or archived one
        is started with its files intact, a failed one is recovered when Daytona
        can, else deleted and replaced. Built on the ``Provider`` methods only.
        """
        missing = {k: v for k, v in match.items() if spec.labels.get(k) != v}
        if missing:
            raise ValueError(f"spec.labels must include the match labels {missing}")
        rank = {"running": 0, "stopped": 1, "failed": 2}
        for candidate in sorted(await self.list(match), key=lambda s: rank[s.status]):
            ref = candidate.provider_object_id
            try:
                await self.start(ref)
            except ProviderError as exc:
                log.warning("daytona provider: replacing failed sandbox %s: %s", ref, exc)
                await self.delete(ref)
                continue
            return replace(candidate, status=await self.status(ref))
        return await self.create(spec)

    # -- inside a sandbox -------------------------------------------------------------

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
        """Run ``argv`` under the ``timeout`` wrapper; never run twice (no retries).

        The client gives up ``exec_grace`` seconds after ``timeout`` (a hung
        toolbox) and reports exit 124; the in-sandbox ``timeout`` kills the
        command's process group on its own.
        """
        cwd = _checked_cwd(argv, cwd, env, timeout)
        sandbox = await self._running_sandbox(ref)
        script = exec_script(
            argv,
            token=secrets.token_hex(8),
            timeout=timeout,
            cwd=cwd,
            env=env or {},
            has_stdin=stdin is not None,
            max_output_bytes=max_output_bytes,
        )
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout + self._exec_grace):
                if stdin is not None and script.stdin_path is not None:
                    await self._files.write(ref, script.stdin_path, once(stdin))
                response = await self._once(
                    "exec", lambda: sandbox.process.exec(script.command, timeout=script.server_timeout), ref
                )
        except TimeoutError:
            log.warning("daytona provider: exec in %s got no answer within its deadline", ref)
            elapsed = int((time.monotonic() - started) * 1000)
            return ExecResult(exit_code=124, stdout=b"", stderr=b"", timed_out=True, duration_ms=elapsed)
        elapsed_s = time.monotonic() - started
        try:
            outcome = parse_exec_output(
                response.result or "", max_output_bytes=max_output_bytes, elapsed=elapsed_s, timeout=timeout
            )
        except ProviderError as exc:
            raise ProviderError(f"{exc.message} (wrapper exit {response.exit_code})", ref=ref) from exc
        return ExecResult(
            exit_code=outcome.exit_code,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            timed_out=outcome.timed_out,
            truncated=outcome.truncated,
            duration_ms=int(elapsed_s * 1000),
        )

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
        """``argv`` in a session of its own, its output live over Daytona's log stream (``live``)."""
        cwd = _checked_cwd(argv, cwd, env, timeout)
        sandbox = await self._running_sandbox(ref)
        events = live_exec(
            sandbox,
            ref,
            argv,
            timeout=timeout,
            grace=self._exec_grace,
            cwd=cwd,
            env=env or {},
            stdin=stdin,
            max_output_bytes=max_output_bytes,
        )
        async with aclosing(events):
            async for event in events:
                yield event

    async def _once(self, what: str, factory: Callable[[], Awaitable[T]], ref: str) -> T:
        """One try, classified: for requests that must not run twice."""
        try:
            return await factory()
        except Exception as exc:
            raise translate(exc, what, ref) from exc

    def read_file(self, ref: str, path: str) -> AsyncIterator[bytes]:
        return self._files.read(ref, path)

    async def write_file(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        await self._files.write(ref, path, data)

    def export_tar(self, ref: str, path: str) -> AsyncIterator[bytes]:
        return self._files.export_tar(ref, path)

    async def import_tar(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        await self._files.import_tar(ref, path, data)


def _checked_cwd(argv: Sequence[str], cwd: str | None, env: Mapping[str, str] | None, timeout: float) -> str:
    """Refuse what no wrapper can run; the working directory to use."""
    check_argv(argv)
    check_exec_args(cwd or WORKSPACE, env or {})
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    return cwd or WORKSPACE


__all__ = ["DaytonaDefaults", "DaytonaProvider"]
