"""The Docker Engine API boundary: one client, one place where engine errors are mapped.

Everything the ``docker`` provider asks of dockerd goes through ``EngineClient``:
JSON calls (``call``), raw streaming requests for the archive API (``request``)
and hijacked exec streams (``exec_stream``). aiodocker supplies the HTTP
transport (unix socket, TCP, TLS, ``DOCKER_HOST``); its public helpers buffer
archives in memory, so the archive endpoints use its low-level query method.

Mapping (``engine_error``), raised ``from`` the engine's exception:

    cannot connect / timeout / 5xx      -> ProviderUnavailable
    404 No such container               -> SandboxNotFound
    404 Could not find the file         -> FileNotFoundError
    "not a directory" (any status)      -> NotADirectoryError
    404 No such image                   -> ImageMissing (the provider applies the pull policy)
    409 not running / paused            -> SandboxNotRunning
    409 other (name taken, ...)         -> Conflict
    400                                 -> BadRequest
    401 / 403                           -> ProviderAuthError
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError
from aiodocker.execs import Exec
from aiodocker.stream import Stream

from app.errors import (
    BadRequest,
    Conflict,
    NotFound,
    ProviderAuthError,
    ProviderUnavailable,
    SandboxControlError,
    SandboxNotFound,
    SandboxNotRunning,
)

#: Seconds to open a connection to the engine.
CONNECT_TIMEOUT = 10.0
#: Seconds any short engine call (inspect, create, start, exec create) may take.
CALL_TIMEOUT = 60.0

#: aiodocker's status for "could not connect to the engine".
_CONNECT_FAILED = 900


class ImageMissing(NotFound):
    """The engine has no such image locally (the provider decides whether to pull)."""

    code = "image_not_found"


def engine_error(exc: DockerError, ref: str | None = None) -> BaseException:
    """The service error (or built-in) that an engine error means."""
    status, message = exc.status, str(exc.message).strip()
    lowered = message.lower()
    where = f"sandbox {ref!r}" if ref else "the Docker Engine"
    if status == _CONNECT_FAILED:
        return ProviderUnavailable(f"cannot reach the Docker Engine: {message}")
    if status == 404:
        if "no such image" in lowered:
            return ImageMissing(message)
        if "could not find the file" in lowered or "no such file" in lowered:
            return FileNotFoundError(message)
        if "no such container" in lowered or ref is not None:
            return SandboxNotFound(f"{where} not found on the Docker Engine", ref=ref)
        return NotFound(message)
    if "not a directory" in lowered:
        return NotADirectoryError(errno.ENOTDIR, message)
    if status == 409:
        if "not running" in lowered or "is paused" in lowered or "is restarting" in lowered:
            return SandboxNotRunning(f"{where} is not running", ref=ref)
        return Conflict(message)
    if status in (401, 403):
        return ProviderAuthError(f"the Docker Engine refused the request: {message}")
    if 400 <= status < 500:
        return BadRequest(f"the Docker Engine rejected the request: {message}")
    return ProviderUnavailable(f"the Docker Engine failed: {message}")


@contextmanager
def mapped_errors(ref: str | None = None, *, what: str = "call") -> Iterator[None]:
    """Translate engine and transport failures raised inside the block."""
    try:
        yield
    except SandboxControlError:
        raise
    except DockerError as exc:
        raise engine_error(exc, ref) from exc
    except aiohttp.ClientError as exc:
        raise ProviderUnavailable(f"Docker Engine connection failed during {what}: {exc!r}") from exc
    except TimeoutError as exc:
        raise ProviderUnavailable(f"the Docker Engine did not answer a {what} in time") from exc


class EngineClient:
    """An async Docker Engine API client with mapped errors; open with ``aopen``."""

    def __init__(self, url: str | None = None) -> None:
        #: ``None``: ``DOCKER_HOST``, else the default unix socket.
        self._url = url
        self._docker: aiodocker.Docker | None = None

    async def aopen(self) -> None:
        """Create the HTTP session (needs a running loop)."""
        if self._docker is None:
            timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT)
            try:
                self._docker = aiodocker.Docker(url=self._url, timeout=timeout)
            except ValueError as exc:  # no DOCKER_HOST and no socket
                raise ProviderUnavailable(f"no Docker Engine configured: {exc}") from exc

    async def aclose(self) -> None:
        if self._docker is not None:
            docker, self._docker = self._docker, None
            await docker.close()

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            raise ProviderUnavailable("the docker provider is not open (aopen was not called)")
        return self._docker

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        ref: str | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> Any:
        """One JSON request; returns the decoded answer (``None`` for empty bodies)."""
        with mapped_errors(ref, what=f"{method} {path.split('/')[0]}"):
            async with asyncio.timeout(timeout):
                return await self.docker._query_json(path, method, params=dict(params or {}), data=body)

    @asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        ref: str | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A raw request whose body the caller streams; no overall time limit."""
        with mapped_errors(ref, what=f"{method} {path.split('/')[-1]}"):
            async with self.docker._query(
                path, method, params=dict(params or {}), data=data, headers=headers, timeout=None
            ) as response:
                try:
                    yield response
                finally:
                    response.release()

    async def head(self, path: str, *, params: Mapping[str, str], ref: str | None = None) -> Mapping[str, str] | None:
        """HEAD ``path``: its headers, or ``None`` on 404 (which has no body to explain it)."""
        with mapped_errors(ref, what=f"HEAD {path.split('/')[-1]}"):
            async with asyncio.timeout(CALL_TIMEOUT):
                await self.docker._check_version()
                url = self.docker._canonicalize_url(path)
                async with self.docker.session.request("HEAD", url, params=dict(params)) as response:
                    if response.status == 404:
                        return None
                    if response.status < 400:
                        return dict(response.headers)
                # Errors of HEAD have no body; the same GET fails the same way, with a message.
                async with self.docker._query(path, "GET", params=dict(params)):
                    pass
                raise DockerError(response.status, f"HEAD {path} answered {response.status}")

    async def exec_stream(self, exec_id: str, ref: str, *, tty: bool = False) -> Stream:
        """Start exec ``exec_id`` attached; the returned stream is open (close it)."""
        stream = Exec(self.docker, exec_id, tty=tty).start(detach=False)
        with mapped_errors(ref, what="exec start"):
            async with asyncio.timeout(CALL_TIMEOUT):
                await stream._init()  # aiodocker connects lazily; surface errors here
        return stream


def half_close(stream: Stream) -> None:
    """Send EOF on the exec's stdin but keep reading its output.

    aiodocker's ``Stream.close`` both half-closes and drops the connection;
    the engine closes the process's stdin when the client half-closes.
    """
    response = stream._resp
    connection = response.connection if response is not None else None
    transport = connection.transport if connection is not None else None
    if transport is not None and transport.can_write_eof():
        transport.write_eof()
