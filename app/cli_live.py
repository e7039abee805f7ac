"""``sandboxctl`` commands for live processes: streamed exec, background processes, a shell.

Imported by ``app.cli`` at start; like it, only cheap standard modules at module
level (asyncio, the client and ``websockets`` load when a command runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.client import SandboxClient


class UsageError(Exception):
    """Wrong arguments: printed as one line by ``app.cli``."""


def _write(stream: str, data: bytes) -> None:
    out = sys.stdout if stream == "stdout" else sys.stderr
    out.buffer.write(data)
    out.buffer.flush()


def cmd_exec(url: str, secret: bytes, args: argparse.Namespace) -> int:
    """Run a command, printing its output as it comes (``--no-stream``: at the end); its exit code.

    Synchronous, over ``app.cli_http``: no asyncio, no httpx, so it starts fast.
    """
    from app.cli_http import post_json, sse_events
    from app.client_events import ESCAPED, Exit, exec_stream_event

    command = list(args.command)
    if not command:
        raise UsageError("usage: sandboxctl exec ID -- COMMAND [ARGS...]")
    body: dict[str, Any] = {"command": command, "stream": not args.no_stream}
    if args.timeout:
        body["timeout_seconds"] = args.timeout
    if args.cwd:
        body["cwd"] = args.cwd
    if not sys.stdin.isatty() and args.stdin:
        body["stdin"] = sys.stdin.read()
    # Streamed chunks as escaped bytes: one C pass to decode, where JSON text costs a parse.
    path = f"/v1/sandboxes/{args.id}/exec" + ("" if args.no_stream else f"?encoding={ESCAPED}")
    accept = "application/json" if args.no_stream else "text/event-stream"
    with post_json(url, secret, path, body, accept=accept) as response:
        if args.no_stream:
            result = json.loads(response.read())
            _write("stdout", result["stdout"].encode())
            _write("stderr", result["stderr"].encode())
            timed_out, code = bool(result["timed_out"]), int(result["exit_code"])
        else:
            timed_out, code = False, 1
            for event, data, _ in sse_events(response):
                item = exec_stream_event(event, data, ESCAPED)
                if isinstance(item, Exit):
                    timed_out, code = item.timed_out, item.exit_code
                elif item is not None:
                    _write(item.stream, item.data)
    if timed_out:
        sys.stderr.write(f"sandboxctl: command timed out after {args.timeout or 'the default'} s\n")
    return code


async def cmd_bg(client: SandboxClient, args: argparse.Namespace) -> int:
    """Start a background process; prints its pid."""
    if not args.command:
        raise UsageError("usage: sandboxctl bg ID -- COMMAND [ARGS...]")
    options = {"cwd": args.cwd} if args.cwd else {}
    print((await client.start_process(args.id, list(args.command), **options))["pid"])
    return 0


async def cmd_ps(client: SandboxClient, args: argparse.Namespace) -> int:
    processes = await client.list_processes(args.id)
    if args.json:
        print(json.dumps(processes))
        return 0
    for p in processes:
        command = p["command"] if isinstance(p["command"], str) else " ".join(p["command"])
        code = "" if p["exit_code"] is None else p["exit_code"]
        print(f"{p['pid']}\t{p['status']}\t{code}\t{p['started_at']}\t{command}")
    return 0


async def cmd_logs(client: SandboxClient, args: argparse.Namespace) -> int:
    """A process's log; ``-f`` follows both streams until it exits (then its exit code)."""
    from app.client import Output

    if not args.follow:
        _write("stdout", await client.process_log(args.id, args.pid, "stderr" if args.stderr else "stdout"))
        return 0
    async for item in client.follow_process(args.id, args.pid):
        if isinstance(item, Output):
            _write(item.stream, item.data)
        else:
            return int(item["exit_code"]) if item["exit_code"] is not None else 0
    return 0


async def cmd_kill(client: SandboxClient, args: argparse.Namespace) -> int:
    await client.signal_process(args.id, args.pid, args.signal)
    return 0


async def cmd_shell(client: SandboxClient, args: argparse.Namespace) -> int:
    """An interactive shell: raw mode, window size followed on SIGWINCH; the shell's exit code."""
    import asyncio
    import contextlib
    import shutil
    import signal
    import termios
    import tty

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    size = shutil.get_terminal_size()
    url, headers = client.pty_handshake(args.id, size.columns, size.lines)
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    code = 0
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        #: Keystrokes (bytes) and resize messages (text) in the order they happened.
        typed: asyncio.Queue[bytes | str] = asyncio.Queue()

        def on_input() -> None:
            data = os.read(stdin, 65536)
            typed.put_nowait(data)
            if not data:
                loop.remove_reader(stdin)

        def on_resize() -> None:
            new = shutil.get_terminal_size()
            typed.put_nowait(json.dumps({"type": "resize", "cols": new.columns, "rows": new.lines}))

        async def forward() -> None:
            while data := await typed.get():
                await ws.send(data)

        if interactive:
            tty.setraw(stdin)
        loop.add_reader(stdin, on_input)
        loop.add_signal_handler(signal.SIGWINCH, on_resize)
        sender = asyncio.create_task(forward())
        try:
            # The server closes with 4000 + the exit code: a normal end here, not an error.
            with contextlib.suppress(ConnectionClosed):
                while True:
                    message = await ws.recv()
                    if isinstance(message, bytes):
                        _write("stdout", message)
                    elif (control := json.loads(message)).get("type") == "exit":
                        code = int(control["exit_code"])
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            loop.remove_reader(stdin)
            loop.remove_signal_handler(signal.SIGWINCH)
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
    return code


def add_commands(sub: Any) -> None:
    """Register exec, bg, ps, logs, kill and shell on ``sandboxctl``'s sub-parsers."""
    exec_ = sub.add_parser("exec", help="run a command, output as it comes: sandboxctl exec ID -- CMD ARGS...")
    exec_.add_argument("id")
    exec_.add_argument("--timeout", type=float)
    exec_.add_argument("--cwd")
    exec_.add_argument("--stdin", action="store_true", help="send this process's stdin")
    exec_.add_argument("--no-stream", action="store_true", help="print the output once the command ended")
    exec_.set_defaults(sync_handler=cmd_exec)

    bg = sub.add_parser("bg", help="start a background process: sandboxctl bg ID -- CMD ARGS...; prints its pid")
    bg.add_argument("id")
    bg.add_argument("--cwd")
    bg.set_defaults(handler=cmd_bg)

    ps = sub.add_parser("ps", help="list a sandbox's background processes")
    ps.add_argument("id")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(handler=cmd_ps)

    logs = sub.add_parser("logs", help="a background process's output: logs ID PID [-f]")
    logs.add_argument("id")
    logs.add_argument("pid")
    logs.add_argument("-f", "--follow", action="store_true", help="both streams until the process exits")
    logs.add_argument("--stderr", action="store_true", help="stderr instead of stdout (without -f)")
    logs.set_defaults(handler=cmd_logs)

    kill = sub.add_parser("kill", help="signal a background process: kill ID PID [--signal TERM|KILL|INT]")
    kill.add_argument("id")
    kill.add_argument("pid")
    kill.add_argument("--signal", default="TERM", choices=["TERM", "KILL", "INT"])
    kill.set_defaults(handler=cmd_kill)

    shell = sub.add_parser("shell", help="an interactive shell in the sandbox")
    shell.add_argument("id")
    shell.set_defaults(handler=cmd_shell)
