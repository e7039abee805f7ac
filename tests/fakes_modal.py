"""A fake of the Modal SDK's ``.aio`` surface, backed by the local provider.

``FakeModal`` stands where ``import modal`` stands: ``ModalProvider(config, context,
sdk=FakeModal(...))``. Commands really run (each Modal sandbox is a local
bubblewrap sandbox); errors are the SDK's own classes from the installed
``modal.exception``; the blocking call forms raise, so only ``.aio`` works.

Behaviours assumed, and where they come from (Modal documentation):

1. ``Client.from_credentials(token_id, token_secret)`` builds a client; a bad
   token surfaces as ``modal.exception.AuthError`` on the first request (here:
   ``App.lookup``, ``Sandbox.create``, ``Sandbox.from_id``).
   - "modal.Client" reference, https://modal.com/docs/reference/modal.Client
   - "modal.exception" reference, https://modal.com/docs/reference/modal.exception
2. ``App.lookup(name, client=, environment_name=, create_if_missing=True)``
   returns the app sandboxes are created in.
   - "modal.App" reference (lookup), https://modal.com/docs/reference/modal.App
3. ``Sandbox.create(*cmd, app=, image=, tags=, secrets=, timeout=,
   idle_timeout=, workdir=, cpu=, memory=, gpu=, block_network=,
   encrypted_ports=)``: the sandbox runs ``cmd`` and ends when it exits;
   ``cpu``/``memory`` may be ``(request, limit)``; an image not built yet is
   built during create; ``block_network=True`` blocks all network access.
   - "modal.Sandbox" reference (create), https://modal.com/docs/reference/modal.Sandbox
   - "Networking and security", https://modal.com/docs/guide/sandbox-networking
4. ``Image.from_registry(tag)`` and ``Image.from_id(id)`` are lazy; ``build``
   resolves the image once and returns it with an ``object_id``.
   - "modal.Image" reference (from_registry, from_id, build), https://modal.com/docs/reference/modal.Image
5. ``sb.exec(*args, timeout=, workdir=, env=, text=False)`` returns a
   ``ContainerProcess`` whose ``stdout``/``stderr`` are async-iterable
   ``StreamReader``s and ``stdin`` a ``StreamWriter`` (``write``,
   ``write_eof``, ``drain``); ``wait()`` returns the exit code (128+n for a
   signal; -1 when the exec's ``timeout`` ended it, which also ends the
   process); exec in a finished sandbox raises ``ConflictError``.
   - "Running commands in Sandboxes", https://modal.com/docs/guide/sandbox-spawn
   - "modal.container_process", https://modal.com/docs/reference/modal.container_process
6. ``sb.poll()`` is ``None`` while running, else the exit code; a terminated
   sandbox reads 137; ``terminate()`` is a no-op on a finished sandbox;
   ``Sandbox.from_id`` of an unknown id raises ``NotFoundError``.
   - "modal.Sandbox" reference (poll, terminate, from_id), https://modal.com/docs/reference/modal.Sandbox
7. Tags: ``tags=`` on create, ``get_tags``/``set_tags``; ``Sandbox.list(app_id=,
   tags=)`` yields running sandboxes holding at least those tags.
   - "modal.Sandbox" reference (get_tags, set_tags, list), https://modal.com/docs/reference/modal.Sandbox
8. ``sb.snapshot_filesystem()`` returns an ``Image`` whose id creates new
   sandboxes with the same files.
   - "Snapshots", https://modal.com/docs/guide/sandbox-snapshots
9. ``sb.tunnels()`` maps each port declared in ``encrypted_ports`` to a
   ``modal.Tunnel`` whose ``url`` is public HTTPS.
   - "Tunnels", https://modal.com/docs/guide/tunnels
   - "modal.Tunnel", https://modal.com/docs/sdk/py/latest/modal.Tunnel

Simplifications (the fake's, not Modal's): a command runs as the local
backend's streamed exec, so output and stdin flow as in Modal;
``snapshot_filesystem`` copies ``/workspace`` only; a failed entry command
reads exit code 1 (the local backend records failed, not the code);
lifetimes (``timeout``/``idle_timeout``) and GPUs are recorded, not enforced.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import modal
import modal.exception as modal_exc

from app.providers.base import OutputChunk, Provider, Resources, SandboxSpec
from app.providers.exec_wrapper import EXEC_MARKER, killer_argv

_FAKE_MAX_OUTPUT = 96 << 20


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


class Aio:
    """One SDK function: ``.aio(...)`` works, the blocking call does not."""

    def __init__(self, fake: FakeModal, name: str, fn: Callable[..., Awaitable[Any]]) -> None:
        self._fake, self._name, self._fn = fake, name, fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{self._name}: the blocking interface would block the event loop; use .aio")

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        self._fake.record(self._name)
        return await self._fn(*args, **kwargs)


class AioGen(Aio):
    """An SDK async generator (``Sandbox.list``): ``.aio(...)`` is iterated, not awaited."""

    def aio(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        async def run() -> AsyncIterator[Any]:
            self._fake.record(self._name)
            async for item in self._fn(*args, **kwargs):  # type: ignore[attr-defined]
                yield item

        return run()


class FakeModal:
    """The ``modal`` namespace the provider uses; one per test, over one local provider."""

    def __init__(
        self, local: Provider, image_dir: Path, *, token_id: str = "fake-id", token_secret: str = "fake-secret"
    ):
        self.local = local
        self.image_dir = image_dir
        self.valid_credentials = (token_id, token_secret)
        self.exception = modal_exc
        self.calls: Counter[str] = Counter()
        self.builds: Counter[str] = Counter()
        self.faults: dict[str, list[BaseException]] = {}
        self.apps: dict[str, FakeApp] = {}
        self.sandboxes: dict[str, FakeSandbox] = {}
        #: image id -> tar of /workspace (snapshots) or None (registry images)
        self.images: dict[str, Path | None] = {}
        #: exec token (``EXEC_MARKER``) -> its process, for the killer exec
        self.processes: dict[str, FakeProcess] = {}
        self.Client = SimpleNamespace(from_credentials=Aio(self, "Client.from_credentials", self._from_credentials))
        self.App = SimpleNamespace(lookup=Aio(self, "App.lookup", self._lookup))
        self.Image = SimpleNamespace(from_registry=self._from_registry, from_id=self._image_from_id)
        self.Secret = SimpleNamespace(from_dict=lambda env: SimpleNamespace(env=dict(env)))
        self.Sandbox = SimpleNamespace(
            create=Aio(self, "Sandbox.create", self._create),
            from_id=Aio(self, "Sandbox.from_id", self._from_id),
            list=AioGen(self, "Sandbox.list", self._list),
        )

    # -- test controls ---------------------------------------------------------

    def fail(self, name: str, *errors: BaseException) -> None:
        """Make the next calls of ``name`` (e.g. ``"App.lookup"``) raise ``errors``, in order."""
        self.faults.setdefault(name, []).extend(errors)

    def record(self, name: str) -> None:
        self.calls[name] += 1
        queued = self.faults.get(name)
        if queued:
            raise queued.pop(0)

    def _authorize(self, client: Any) -> None:
        if client is None or (client.token_id, client.token_secret) != self.valid_credentials:
            raise modal_exc.AuthError("Token ID is malformed or invalid")

    # -- client, app, images ----------------------------------------------------

    async def _from_credentials(self, token_id: str, token_secret: str) -> Any:
        client = SimpleNamespace(token_id=token_id, token_secret=token_secret, closed=False)

        async def close() -> None:
            client.closed = True

        client.close = Aio(self, "Client.close", close)
        return client

    async def _lookup(
        self, name: str, *, client: Any = None, environment_name: str | None = None, create_if_missing: bool = False
    ) -> FakeApp:
        self._authorize(client)
        key = f"{environment_name or 'main'}/{name}"
        if key not in self.apps:
            if not create_if_missing:
                raise modal_exc.NotFoundError(f"App '{name}' not found")
            self.apps[key] = FakeApp(app_id=_new_id("ap"), name=name)
        return self.apps[key]

    def _from_registry(self, tag: str, **_: Any) -> FakeImage:
        return FakeImage(self, tag=tag)

    def _image_from_id(self, image_id: str, client: Any = None) -> FakeImage:
        return FakeImage(self, tag=None, object_id=image_id)

    async def build_image(self, image: FakeImage) -> None:
        """Resolve ``image``: a registry tag is "built" (slowly, so racing builds would show)."""
        if image.object_id is not None:
            if image.object_id not in self.images:
                raise modal_exc.NotFoundError(f"Image {image.object_id} not found")
            return
        assert image.tag is not None
        self.builds[image.tag] += 1
        await asyncio.sleep(0.05)
        image.object_id = _new_id("im")
        self.images[image.object_id] = None

    # -- sandboxes ----------------------------------------------------------------

    async def _create(
        self,
        *args: str,
        app: FakeApp | None = None,
        image: FakeImage | None = None,
        tags: dict[str, str] | None = None,
        secrets: list[Any] | None = None,
        env: dict[str, str] | None = None,
        timeout: int | None = 300,
        idle_timeout: int | None = None,
        workdir: str | None = None,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        gpu: str | None = None,
        block_network: bool = False,
        encrypted_ports: list[int] | tuple[int, ...] = (),
        client: Any = None,
    ) -> FakeSandbox:
        self._authorize(client)
        if app is None:
            raise modal_exc.InvalidError("App must be provided when creating a Sandbox")
        if timeout is not None and not 1 <= timeout <= 24 * 3600:
            raise modal_exc.InvalidError(f"timeout must be between 1 and 86400 seconds, got {timeout}")
        if image is not None and image.object_id is None:
            await self.build_image(image)  # Modal builds a lazy image during create
        merged = dict(env or {})
        for secret in secrets or ():
            merged.update(secret.env)
        spec = SandboxSpec(
            sandbox_id=_new_id("fake"),
            env=merged,
            # Limits: the local backend enforces the hard limit (request == limit here).
            resources=Resources(
                cpu=cpu[1] if isinstance(cpu, tuple) else cpu,
                memory_mb=memory[1] if isinstance(memory, tuple) else memory,
            ),
            network="none" if block_network else "host",
            command=list(args) or None,
        )
        created = await self.local.create(spec)
        snapshot = self.images.get(image.object_id) if image is not None and image.object_id else None
        if snapshot is not None:
            await self.local.import_tar(created.provider_object_id, "/workspace", _read_file(snapshot))
        sandbox = FakeSandbox(self, created.provider_object_id, app.app_id, dict(tags or {}), list(encrypted_ports))
        sandbox.options = {"timeout": timeout, "idle_timeout": idle_timeout, "gpu": gpu, "workdir": workdir}
        self.sandboxes[sandbox.object_id] = sandbox
        return sandbox

    async def _from_id(self, sandbox_id: str, client: Any = None) -> FakeSandbox:
        self._authorize(client)
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise modal_exc.NotFoundError(f"Sandbox {sandbox_id} not found")
        await sandbox.refresh()
        return sandbox

    async def _list(
        self, *, app_id: str | None = None, tags: dict[str, str] | None = None, client: Any = None
    ) -> AsyncIterator[FakeSandbox]:
        self._authorize(client)
        wanted = tags or {}
        for sandbox in list(self.sandboxes.values()):
            if app_id and sandbox.app_id != app_id:
                continue
            if any(sandbox.tags.get(k) != v for k, v in wanted.items()):
                continue
            if await sandbox.refresh() is None:  # include_finished=False
                yield sandbox


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, 1 << 20):
            yield chunk


class FakeApp(SimpleNamespace):
    app_id: str
    name: str


class FakeImage:
    """``modal.Image``: lazy until ``build``; then has an ``object_id``."""

    def __init__(self, fake: FakeModal, *, tag: str | None, object_id: str | None = None) -> None:
        self._fake, self.tag, self.object_id = fake, tag, object_id
        self.build = Aio(fake, "Image.build", self._build)

    async def _build(self, app: Any = None) -> FakeImage:
        await self._fake.build_image(self)
        return self


class FakeSandbox:
    """``modal.Sandbox`` over one local sandbox."""

    def __init__(self, fake: FakeModal, local_ref: str, app_id: str, tags: dict[str, str], ports: list[int]) -> None:
        self._fake, self.local_ref, self.app_id, self.tags, self.ports = fake, local_ref, app_id, tags, ports
        self.object_id = _new_id("sb")
        self.returncode: int | None = None
        self.terminated = False
        self.options: dict[str, Any] = {}
        self.exec = Aio(fake, "Sandbox.exec", self._exec)
        self.poll = Aio(fake, "Sandbox.poll", self.refresh)
        self.terminate = Aio(fake, "Sandbox.terminate", self._terminate)
        self.get_tags = Aio(fake, "Sandbox.get_tags", self._get_tags)
        self.set_tags = Aio(fake, "Sandbox.set_tags", self._set_tags)
        self.snapshot_filesystem = Aio(fake, "Sandbox.snapshot_filesystem", self._snapshot_filesystem)
        self.tunnels = Aio(fake, "Sandbox.tunnels", self._tunnels)

    async def refresh(self) -> int | None:
        if self.terminated:
            self.returncode = 137
        elif self.returncode is None:
            status = await self._fake.local.status(self.local_ref)
            self.returncode = None if status == "running" else (0 if status == "stopped" else 1)
        return self.returncode

    async def _terminate(self) -> None:
        if await self.refresh() is None:  # a finished sandbox: terminate is a no-op
            self.terminated, self.returncode = True, 137
            await self._fake.local.delete(self.local_ref)

    async def _get_tags(self) -> dict[str, str]:
        return dict(self.tags)

    async def _set_tags(self, tags: dict[str, str]) -> None:
        self.tags = dict(tags)

    async def _exec(
        self,
        *args: str,
        timeout: int | None = None,
        workdir: str | None = None,
        env: dict[str, str | None] | None = None,
        text: bool = True,
    ) -> FakeProcess:
        if await self.refresh() is not None:
            raise modal_exc.ConflictError("Sandbox already finished")
        clean_env = {k: v for k, v in (env or {}).items() if v is not None}
        if list(args[:-1]) == killer_argv("")[:-1]:
            # One pid namespace per Modal sandbox: the killer reaches the exec it names.
            # Each local exec has its own, so the fake ends that exec's process for it.
            target = self._fake.processes.pop(args[-1], None)
            if target is not None:
                await target.kill()
        process = FakeProcess(self._fake, self.local_ref, list(args), timeout, workdir, clean_env, text)
        if EXEC_MARKER in clean_env:
            self._fake.processes[clean_env[EXEC_MARKER]] = process
        return process

    async def _snapshot_filesystem(self, timeout: int = 55, *, ttl: int | None = None) -> FakeImage:
        image_id = _new_id("im")
        self._fake.image_dir.mkdir(parents=True, exist_ok=True)
        path = self._fake.image_dir / f"{image_id}.tar"
        with path.open("wb") as handle:
            async for chunk in self._fake.local.export_tar(self.local_ref, "/workspace"):
                await asyncio.to_thread(handle.write, chunk)
        self._fake.images[image_id] = path
        return FakeImage(self._fake, tag=None, object_id=image_id)

    async def _tunnels(self, timeout: int = 50) -> dict[int, modal.Tunnel]:
        host = self.object_id.removeprefix("sb-")
        return {p: modal.Tunnel(f"{host}-{p}.fake-modal.invalid", 443, "", 0) for p in self.ports}


class FakeProcess:
    """``ContainerProcess``: the local backend's streamed exec behind Modal's reader/writer shapes."""

    def __init__(
        self,
        fake: FakeModal,
        local_ref: str,
        argv: list[str],
        timeout: int | None,
        workdir: str | None,
        env: dict[str, str],
        text: bool,
    ) -> None:
        self._fake, self._ref, self._argv, self._timeout = fake, local_ref, argv, timeout
        self._workdir, self._env, self._text = workdir, env, text
        self._input: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._outputs: dict[int, asyncio.Queue[bytes | None]] = {1: asyncio.Queue(), 2: asyncio.Queue()}
        self.returncode: int | None = None
        self.stdin = SimpleNamespace(
            write=lambda data: self._input.put_nowait(bytes(data)),
            write_eof=lambda: self._input.put_nowait(None),
            drain=Aio(fake, "StreamWriter.drain", self._drain),
        )
        self.stdout = _Reader(self, 1)
        self.stderr = _Reader(self, 2)
        self.wait = Aio(fake, "ContainerProcess.wait", self._wait)
        self._task = asyncio.ensure_future(self._run())

    async def _drain(self) -> None:
        await asyncio.sleep(0)

    async def _stdin(self) -> AsyncIterator[bytes]:
        while (chunk := await self._input.get()) is not None:
            yield chunk

    async def _run(self) -> int:
        try:
            async for event in self._fake.local.exec_stream(
                self._ref,
                self._argv,
                timeout=float(self._timeout or 3600),
                cwd=self._workdir,
                env=self._env,
                stdin=self._stdin(),
                max_output_bytes=_FAKE_MAX_OUTPUT,
            ):
                if isinstance(event, OutputChunk):
                    await self._outputs[1 if event.stream == "stdout" else 2].put(event.data)
                else:
                    self.returncode = -1 if event.timed_out else event.exit_code
        finally:
            for queue in self._outputs.values():
                queue.put_nowait(None)
        assert self.returncode is not None
        return self.returncode

    async def _wait(self) -> int:
        await asyncio.gather(asyncio.shield(self._task), return_exceptions=True)
        if self._task.cancelled():
            return 128 + 9
        return self._task.result()

    async def kill(self) -> None:
        """End the command (its exec reports 137, as after SIGKILL)."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        for queue in self._outputs.values():
            queue.put_nowait(None)

    async def chunks(self, fd: int) -> AsyncIterator[bytes]:
        """One stream's chunks as the command writes them."""
        while (chunk := await self._outputs[fd].get()) is not None:
            yield chunk


class _Reader:
    """``StreamReader``: async-iterable chunks of one stream."""

    def __init__(self, process: FakeProcess, fd: int) -> None:
        self._process, self._fd = process, fd

    async def __aiter__(self) -> AsyncIterator[bytes | str]:
        async for chunk in self._process.chunks(self._fd):
            yield chunk.decode(errors="replace") if self._process._text else chunk
