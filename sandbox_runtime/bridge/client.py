"""The bridge: one WebSocket to the control plane, one env server session, a durable outbox.

Connection lifecycle::

    connect (Authorization: Bearer, X-Sandbox-ID) ──401/403/404/410──▶ exit 0 (session over)
        │ ok            (meanwhile: wait for the env server, choose its session)
        ▼
    send ready ─▶ flush outbox (all pending, in order) ─▶ serve commands, heartbeats,
                  re-send unacked critical events every resend interval
        │ closed / error
        ▼
    persist unsent events, back off (capped, jittered), reconnect; give up after
    BRIDGE_MAX_DISCONNECTED seconds without a connection (exit 0: the session is gone)

Prompts run one at a time from a queue, independently of the connection: events a
prompt produces while disconnected go to the outbox on disk and are delivered after
the next connect (also after a bridge restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from sandbox_runtime import contract as c
from sandbox_runtime.bridge import protocol as p
from sandbox_runtime.bridge.attachments import FetchUpload
from sandbox_runtime.bridge.buffer import DurableOutbox
from sandbox_runtime.bridge.opencode import OpenCodeClient
from sandbox_runtime.bridge.session import SessionRunner
from sandbox_runtime.config import RuntimeConfig
from sandbox_runtime.jsonlog import JsonLogger

SESSION_OVER_STATUSES = frozenset({401, 403, 404, 410})
EXIT_SIGNALLED = 143  # not 0: only the control plane may declare the session over
_RECONNECT_BASE = 0.5


def websocket_url(control_plane_url: str, session_id: str) -> str:
    """``{control plane with http→ws, https→wss}/sessions/{id}/ws?type=sandbox``."""
    base = control_plane_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return f"{base}/sessions/{session_id}/ws?type=sandbox"


class Bridge:
    """Runs until the session is over; :meth:`run` returns the process exit code."""

    def __init__(
        self,
        config: RuntimeConfig,
        *,
        opencode: OpenCodeClient,
        log: JsonLogger,
        fetch_upload: FetchUpload | None = None,
    ) -> None:
        if config.session is None:
            raise ValueError(f"the bridge needs {c.SESSION_CONFIG}")
        self.config = config
        self._log = log
        self.outbox = DurableOutbox(config.outbox_file, max_entries=config.bridge.buffer_max_events)
        self._ws: ClientConnection | None = None
        self._wakeup = asyncio.Event()
        self._exit = asyncio.Event()
        self._exit_code = c.EXIT_OK
        self.runner = SessionRunner(
            config, opencode=opencode, emit=self.emit, log=log, fetch_upload=fetch_upload, reported=self._reported
        )
        self._starting: asyncio.Task[None] | None = None

    # --- outbound -------------------------------------------------------------------------

    def emit(self, event: p.OutboundEvent) -> None:
        """Queue an event for delivery (durably when critical or disconnected)."""
        data = event.to_wire(self.config.sandbox_id)
        critical = data["type"] in p.CRITICAL_EVENT_TYPES
        entry, dropped = self.outbox.add(data, critical=critical, durable=self._ws is None)
        if dropped:
            self._log.warning("outbox.dropped", count=len(dropped), types=[d.event.get("type") for d in dropped])
        if critical:
            self._log.info("event.critical", type=data["type"], ack_id=entry.entry_id)
        self._wakeup.set()

    def _reported(self, message_id: str) -> bool:
        """True when an ``execution_complete`` of ``message_id`` waits in the outbox."""
        return any(
            e.event.get("type") == "execution_complete" and e.event.get("messageId") == message_id
            for e in self.outbox.pending()
        )

    async def _send(self, ws: ClientConnection, data: dict[str, object]) -> None:
        # Stamped again on the way out: an event from the outbox may have been produced under
        # another id (a snapshot's pending events, restored into a sandbox with a new id).
        data["sandboxId"] = self.config.sandbox_id
        await ws.send(json.dumps(data, separators=(",", ":")))

    async def _sender(self, ws: ClientConnection) -> None:
        """Deliver pending entries in order; re-send unacked critical ones when due."""
        resend = self.config.bridge.resend_interval
        while True:
            self._wakeup.clear()
            now = time.monotonic()
            next_due = now + resend
            for entry in self.outbox.pending():
                if entry.sent_at is None or (entry.critical and now - entry.sent_at >= resend):
                    await self._send(ws, entry.event)
                    entry.sent_at = now
                    if not entry.critical:
                        self.outbox.complete(entry.entry_id)
                        continue
                if entry.critical and self.outbox.get(entry.entry_id) is not None:
                    next_due = min(next_due, (entry.sent_at or now) + resend)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.01, next_due - time.monotonic()))

    async def _heartbeat(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.config.bridge.heartbeat_interval)
            status = "busy" if self.runner.busy else "ready"
            await self._send(ws, p.HeartbeatEvent(status=status).to_wire(self.config.sandbox_id))

    # --- inbound --------------------------------------------------------------------------

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            command = p.parse_command(raw)
        except p.UnknownCommand as exc:
            self._log.warning("command.ignored", error=str(exc))
            return
        self._log.info("command", type=command.type)
        if isinstance(command, p.AckCommand):
            if not self.outbox.complete(command.ack_id):
                self._log.debug("ack.unknown", ack_id=command.ack_id)
        elif isinstance(command, p.PromptCommand):
            self.runner.submit(command)
        elif isinstance(command, p.StopCommand):
            self.runner.stop()
        elif isinstance(command, p.PushCommand):
            self.runner.push(command)
        elif isinstance(command, p.SnapshotCommand):
            # The service snapshots the filesystem from outside; our part is to make every
            # pending event and the session id durable first, then say so.
            self.outbox.persist_all()
            self.emit(p.SnapshotReadyEvent(opencode_session_id=self.runner.opencode_session_id))
        elif isinstance(command, p.ShutdownCommand):
            self.stop(c.EXIT_OK)

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self, code: int) -> None:
        """End :meth:`run` with ``code`` (0 = session over)."""
        self._exit_code = code
        self._exit.set()

    async def run(self) -> int:
        """Prepare the env server session and connect meanwhile; hold the connection until the session ends.

        The connection opens while the env server may still be booting; ``ready`` (which
        names the env server session) is its first message all the same, sent once the
        session is chosen.
        """
        pending = self.outbox.load()
        self._log.info("bridge.start", pending_events=pending)
        self._starting = asyncio.create_task(self.runner.start())
        self._starting.add_done_callback(self._on_started)
        try:
            return await self._connection_loop()
        finally:
            if not self._starting.done():  # stopped while waiting for the env server
                self._starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._starting
            await self.runner.close()
            self.outbox.persist_all()
            self._log.info("bridge.exit", code=self._exit_code, pending_events=len(self.outbox))

    def _on_started(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log.error("bridge.session_failed", error=str(task.exception()))
            self.stop(c.EXIT_FATAL)

    async def _session_ready(self) -> bool:
        """Wait until the env server session is chosen; False when the bridge is to exit first."""
        starting = self._starting
        assert starting is not None
        if not starting.done():
            exit_wait = asyncio.create_task(self._exit.wait())
            try:
                await asyncio.wait({starting, exit_wait}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                exit_wait.cancel()
        return starting.done() and not starting.cancelled() and starting.exception() is None

    async def _connection_loop(self) -> int:
        assert self.config.session is not None
        url = websocket_url(self.config.control_plane_url, self.config.session.session_id)
        headers = {"Authorization": f"Bearer {self.config.auth_token}", "X-Sandbox-ID": self.config.sandbox_id}
        attempt = 0
        disconnected_since = time.monotonic()
        while not self._exit.is_set():
            connected = False
            try:
                async with websockets.connect(
                    url, additional_headers=headers, open_timeout=10, close_timeout=2, max_size=16 * 2**20
                ) as ws:
                    connected = True
                    attempt = 0
                    self._log.info("ws.connected")
                    await self._serve(ws)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in SESSION_OVER_STATUSES:
                    self._log.info("session.over", reason=f"handshake answered {status}")
                    return c.EXIT_OK
                self._log.warning("ws.refused", status=status)
            except (OSError, TimeoutError, WebSocketException) as exc:
                self._log.warning("ws.disconnected", error=f"{type(exc).__name__}: {exc}"[:300])
            if connected:
                disconnected_since = time.monotonic()
            self._ws = None
            self.outbox.persist_all()
            if self._exit.is_set():
                break
            if time.monotonic() - disconnected_since > self.config.bridge.max_disconnected:
                self._log.error("session.over", reason="control plane unreachable for too long")
                return c.EXIT_OK
            delay = min(_RECONNECT_BASE * 2.0**attempt, self.config.bridge.reconnect_max_delay)
            delay *= 0.5 + random.random() / 2
            attempt = min(attempt + 1, 30)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), timeout=delay)
        return self._exit_code

    async def _serve(self, ws: ClientConnection) -> None:
        if not await self._session_ready():
            return
        await self._send(ws, p.ReadyEvent(opencode_session_id=self.runner.opencode_session_id).to_wire(
            self.config.sandbox_id
        ))  # fmt: skip
        self._ws = ws
        self.outbox.mark_all_unsent()
        tasks = [asyncio.create_task(self._sender(ws)), asyncio.create_task(self._heartbeat(ws))]
        exit_wait = asyncio.create_task(self._exit.wait())
        receiver = asyncio.create_task(self._receive(ws))
        try:
            await asyncio.wait([receiver, exit_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._ws = None
            for task in (*tasks, exit_wait, receiver):
                task.cancel()
            await asyncio.gather(*tasks, exit_wait, receiver, return_exceptions=True)
            for task in tasks:  # a sender that died of a closed socket is a disconnect, not a crash
                if task.done() and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if not isinstance(exc, ConnectionClosed):
                        self._log.error("ws.task_failed", error=repr(exc))
            if self._exit.is_set():
                with contextlib.suppress(Exception):
                    await ws.close(code=1000, reason="session over" if self._exit_code == 0 else "stopping")

    async def _receive(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                self._dispatch(raw)
