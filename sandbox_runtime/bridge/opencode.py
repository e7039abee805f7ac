"""Adapter for the OpenCode server API (checked against ``opencode serve`` 1.18's ``/doc``).

Routes used::

    GET  /global/health                        {"healthy": true, "version": ...}
    GET  /session/{id}                          200 session | 404
    POST /session                               {"title"} -> {"id": "ses_...", ...}
    POST /session/{id}/prompt_async             {"parts": [...], "model": {providerID, modelID},
                                                 "variant"?} -> 204
    POST /session/{id}/abort                    -> true
    GET  /event                                 SSE, ``data: {"type", "properties"}``; first ``server.connected``

Every request carries the env server's basic auth (:mod:`sandbox_runtime.serverauth`).
A prompt's parts are its text, then one ``{"type": "file", "mime", "url", "filename"}`` per
attachment (``data:`` URLs for inline content). ``variant`` is the control plane's
``reasoningEffort``: OpenCode's name for a model's reasoning presets (``low``, ``medium``,
``high``, ``max``, ... per model; a variant the model does not have is ignored).

A prompt subscribes to ``/event`` *before* calling ``prompt_async`` (events are not
replayed), and :class:`PromptTranslator` turns OpenCode events into bridge events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from sandbox_runtime.bridge import protocol as p
from sandbox_runtime.health import HealthCheck, LoopbackRequest, wait_until_healthy

HEALTH_PATH = "/global/health"
_REQUEST_TIMEOUT = 10.0
MAX_PROVIDER_RETRIES = 10  # OpenCode retries a failing provider forever; we report failure instead


class EnvServerError(RuntimeError):
    """The env server is unreachable or answered unexpectedly."""


@dataclass(frozen=True)
class ModelRef:
    """An OpenCode model reference."""

    provider_id: str
    model_id: str

    @classmethod
    def parse(cls, model: str | None, default_provider: str, default_model: str) -> ModelRef | None:
        """``provider/model``, a bare model id at ``default_provider``, or the defaults."""
        if model and "/" in model:
            provider_id, model_id = model.split("/", 1)
            return cls(provider_id, model_id)
        if model and default_provider:
            return cls(default_provider, model)
        if default_provider and default_model:
            return cls(default_provider, default_model)
        return None


class EventStream:
    """Server-sent events from ``/event`` as parsed JSON objects."""

    def __init__(self, lines: AsyncIterator[str]) -> None:
        self._lines = lines

    async def next(self, timeout: float) -> dict[str, Any]:
        """The next event.

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds.
            EnvServerError: the stream ended.
        """
        async with asyncio.timeout(timeout):
            data: list[str] = []
            async for line in self._lines:
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    try:
                        event = json.loads("\n".join(data))
                    except ValueError:
                        data.clear()
                        continue
                    if isinstance(event, dict):
                        return event
                    data.clear()
        raise EnvServerError("env server event stream ended")


class OpenCodeClient:
    """Thin async client; ``http`` and ``health`` are injectable (an ``httpx.MockTransport`` in unit tests).

    Health goes around ``http``: probes are many while the env server boots, and a raw
    loopback probe (:mod:`sandbox_runtime.health`) costs a tenth of the CPU of an httpx
    request at the moment the env server needs every cycle.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        http: httpx.AsyncClient | None = None,
        health: HealthCheck | None = None,
    ) -> None:
        """``headers`` go with every request (the env server's ``Authorization``)."""
        # trust_env=False: loopback traffic must never be sent to a proxy from the environment.
        # The env server speaks plain http on loopback, so no CA bundle is loaded (that costs
        # ~50 ms of CPU while the env server boots next to us). Verification stays on: a
        # context that trusts no CA fails closed should a URL ever name https.
        self._http = http or httpx.AsyncClient(
            base_url=base_url,
            headers=dict(headers or {}),
            timeout=_REQUEST_TIMEOUT,
            trust_env=False,
            verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
        )
        self._health = health or LoopbackRequest(f"{base_url.rstrip('/')}{HEALTH_PATH}", headers=headers)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise EnvServerError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def healthy(self) -> bool:
        """True when ``/global/health`` answers 200 within a second."""
        return await self._health(1.0)

    async def wait_healthy(self, timeout: float) -> None:
        """Probe health until it answers or ``timeout`` passes (see :func:`wait_until_healthy`).

        Raises:
            EnvServerError: still unhealthy at the deadline.
        """
        if not await wait_until_healthy(self._health, timeout=timeout):
            raise EnvServerError(f"env server not healthy within {timeout:.0f}s")

    async def session_exists(self, session_id: str) -> bool:
        """True when the env server knows ``session_id``."""
        response = await self._request("GET", f"/session/{session_id}")
        return response.status_code == 200

    async def create_session(self, title: str) -> str:
        """Create a session and return its id."""
        response = await self._request("POST", "/session", json={"title": title})
        if response.status_code != 200:
            raise EnvServerError(f"POST /session answered {response.status_code}: {response.text[:300]}")
        session_id = response.json().get("id")
        if not isinstance(session_id, str) or not session_id:
            raise EnvServerError("POST /session answered without an id")
        return session_id

    async def prompt_async(
        self,
        session_id: str,
        text: str,
        model: ModelRef | None,
        *,
        variant: str | None = None,
        files: Sequence[Mapping[str, str]] = (),
    ) -> None:
        """Start a prompt; returns once accepted (events arrive on ``/event``).

        ``files`` are OpenCode file parts (``type``, ``mime``, ``url``, ``filename``).
        """
        body: dict[str, Any] = {"parts": [{"type": "text", "text": text}, *(dict(f) for f in files)]}
        if model is not None:
            body["model"] = {"providerID": model.provider_id, "modelID": model.model_id}
        if variant:
            body["variant"] = variant
        response = await self._request("POST", f"/session/{session_id}/prompt_async", json=body)
        if response.status_code not in (200, 204):
            raise EnvServerError(f"prompt_async answered {response.status_code}: {response.text[:300]}")

    async def abort(self, session_id: str) -> None:
        """Abort whatever the session is doing (best effort)."""
        with contextlib.suppress(EnvServerError):
            await self._request("POST", f"/session/{session_id}/abort")

    @contextlib.asynccontextmanager
    async def subscribe(self, connect_timeout: float = 10.0) -> AsyncIterator[EventStream]:
        """Open ``/event`` and wait for ``server.connected`` so no later event can be missed.

        Raises:
            EnvServerError: the stream cannot be opened.
        """
        subscribed = False
        try:
            async with self._http.stream("GET", "/event", timeout=httpx.Timeout(connect_timeout, read=None)) as resp:
                if resp.status_code != 200:
                    raise EnvServerError(f"GET /event answered {resp.status_code}")
                stream = EventStream(resp.aiter_lines())
                first = await stream.next(connect_timeout)
                if first.get("type") != "server.connected":
                    raise EnvServerError(f"unexpected first event {first.get('type')!r}")
                subscribed = True
                yield stream
        except httpx.HTTPError as exc:  # also a stream that breaks while the caller reads it
            raise EnvServerError(f"event stream: {type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:
            if subscribed:
                raise  # the caller's inactivity timeout, not ours
            raise EnvServerError("event stream: no server.connected event") from exc


def error_text(error: Any) -> str:
    """Message of an OpenCode error object ``{"name", "data": {"message"}}``."""
    if isinstance(error, dict):
        data = error.get("data")
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
        return str(error.get("message") or error.get("name") or "unknown error")
    return str(error) if error else "unknown error"


@dataclass
class PromptTranslator:
    """Turns the OpenCode events of one prompt into bridge events; ``done`` once idle."""

    session_id: str
    message_id: str
    done: bool = False
    errors: list[str] = field(default_factory=list)
    _assistant_ids: set[str] = field(default_factory=set)
    _part_types: dict[str, str] = field(default_factory=dict)
    _texts: dict[str, str] = field(default_factory=dict)
    _tool_states: set[tuple[str, str]] = field(default_factory=set)
    _started: bool = False
    _retries: int = 0

    @property
    def success(self) -> bool:
        """False once any error was reported."""
        return not self.errors

    def feed(self, event: dict[str, Any]) -> list[p.OutboundEvent]:
        """Translate one OpenCode event (events of other sessions yield nothing)."""
        props = event.get("properties")
        if not isinstance(props, dict) or self.done:
            return []
        kind = event.get("type")
        if kind == "message.part.updated":
            part = props.get("part")
            if isinstance(part, dict) and part.get("sessionID") == self.session_id:
                return self._part(part)
            return []
        if props.get("sessionID") != self.session_id:
            return []
        if kind == "message.updated":
            info = props.get("info") or {}
            if info.get("role") == "assistant" and isinstance(info.get("id"), str):
                self._assistant_ids.add(info["id"])
                self._started = True
        elif kind == "message.part.delta":
            return self._delta(props)
        elif kind == "session.error":
            message = error_text(props.get("error"))
            self.errors.append(message)
            self._started = True
            # Refused before any answer began (e.g. an attachment it cannot decode): OpenCode
            # reports the error and goes quiet, no idle follows.
            self.done = not self._assistant_ids
            return [p.ErrorEvent(error=message, message_id=self.message_id)]
        elif kind == "session.status":
            return self._status(props.get("status") or {})
        elif kind == "session.idle" and self._started:
            self.done = True
        return []

    def _status(self, status: dict[str, Any]) -> list[p.OutboundEvent]:
        state = status.get("type")
        if state == "busy":
            self._started = True
        elif state == "idle" and self._started:
            self.done = True
        elif state == "retry":
            self._started = True
            self._retries += 1
            if self._retries >= MAX_PROVIDER_RETRIES:
                message = f"provider keeps failing: {status.get('message', 'retrying')}"
                self.errors.append(message)
                self.done = True
                return [p.ErrorEvent(error=message, message_id=self.message_id)]
        return []

    def _delta(self, props: dict[str, Any]) -> list[p.OutboundEvent]:
        part_id = props.get("partID")
        if (
            props.get("messageID") not in self._assistant_ids
            or props.get("field") != "text"
            or not isinstance(part_id, str)
            or self._part_types.get(part_id) != "text"
        ):
            return []
        self._texts[part_id] = self._texts.get(part_id, "") + str(props.get("delta", ""))
        return [p.TokenEvent(content=self._texts[part_id], message_id=self.message_id, part_id=part_id)]

    def _part(self, part: dict[str, Any]) -> list[p.OutboundEvent]:
        if part.get("messageID") not in self._assistant_ids:
            return []  # the user's own prompt parts, or another prompt's
        part_id = str(part.get("id", ""))
        kind = part.get("type")
        self._part_types[part_id] = str(kind)
        if kind == "text":
            text = str(part.get("text") or "")
            if text and text != self._texts.get(part_id):
                self._texts[part_id] = text
                return [p.TokenEvent(content=text, message_id=self.message_id, part_id=part_id)]
        elif kind == "tool":
            state = part.get("state") or {}
            status = str(state.get("status", ""))
            args = state.get("input") if isinstance(state.get("input"), dict) else {}
            key = (str(part.get("callID", "")), status)
            if (status == "pending" and not args) or key in self._tool_states:
                return []
            self._tool_states.add(key)
            output = state.get("output") if status == "completed" else state.get("error")
            return [
                p.ToolCallEvent(
                    tool=str(part.get("tool", "")),
                    args=args,
                    call_id=key[0],
                    status=status,
                    output=str(output) if output is not None else None,
                    message_id=self.message_id,
                )
            ]
        elif kind == "step-start":
            return [p.StepStartEvent(message_id=self.message_id)]
        elif kind == "step-finish":
            tokens = part.get("tokens")
            return [
                p.StepFinishEvent(
                    message_id=self.message_id,
                    cost=part.get("cost"),
                    tokens=tokens if isinstance(tokens, dict) else None,
                    reason=part.get("reason"),
                )
            ]
        return []
