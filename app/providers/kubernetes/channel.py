"""The remote-command channel protocol of ``pods/exec`` over a websocket: a pure codec.

Every binary message starts with one channel byte: 0 stdin, 1 stdout,
2 stderr, 3 error (a ``Status`` object when the command ends), 4 terminal
resize. Two protocol versions matter:

* ``v5.channel.k8s.io`` (Kubernetes 1.30+) adds channel 255, *close*:
  ``[255, 0]`` half-closes stdin, so ``cat > file`` sees its end of input.
* ``v4.channel.k8s.io`` cannot close stdin. Stdin is then framed in-band as
  ``<length>\\n<bytes>`` blocks ended by ``0\\n`` and unframed in the
  sandbox by a POSIX shell loop (``read`` the length, ``head -c`` the bytes),
  which ends the command's input exactly where ours ends.

The exit code comes from the final ``Status``: ``Success`` is 0;
``Failure`` with reason ``NonZeroExitCode`` carries the code as the message
of its ``ExitCode`` cause; any other failure means the command did not run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from app.errors import ProviderError

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
#: What we offer, preferred first.
PROTOCOLS: tuple[str, ...] = (V5, V4)

STDIN = 0
STDOUT = 1
STDERR = 2
ERROR = 3
RESIZE = 4
CLOSE = 255

#: v4 only: turns framed stdin back into a byte stream for the command in ``"$@"``.
#: ``read`` takes one byte at a time from a pipe and ``head -c N`` reads exactly N,
#: so no byte of the next frame is lost between them.
V4_UNFRAME = 'while IFS= read -r n && [ "$n" -gt 0 ] 2>/dev/null; do head -c "$n" || exit 1; done | "$@"'
#: The frame that ends v4 stdin.
V4_END = b"0\n"


class ChannelProtocolError(ProviderError):
    """The API server sent something the channel protocol does not allow."""


class ExecNotStarted(ProviderError):
    """The command could not be run at all (the ``Status`` was not an exit code)."""


def encode(channel: int, data: bytes = b"") -> bytes:
    """One websocket message on ``channel``."""
    return bytes((channel,)) + data


def decode(message: bytes | str) -> tuple[int, bytes]:
    """``(channel, payload)`` of one message; text messages and empty ones are protocol errors."""
    if isinstance(message, str) or not message:
        raise ChannelProtocolError("the API server sent a text or empty message on an exec channel")
    return message[0], bytes(message[1:])


def close_stdin(protocol: str) -> bytes:
    """The message that ends stdin: v5's close signal, v4's end frame."""
    if protocol == V5:
        return bytes((CLOSE, STDIN))
    return encode(STDIN, V4_END)


def stdin_message(protocol: str, data: bytes) -> bytes:
    """``data`` on stdin: as is (v5) or as one length-prefixed frame (v4)."""
    if protocol == V5:
        return encode(STDIN, data)
    return encode(STDIN, f"{len(data)}\n".encode() + data)


def wrap_stdin(protocol: str, argv: Sequence[str]) -> list[str]:
    """``argv`` prepared to receive stdin under ``protocol`` (v4: behind the unframer)."""
    if protocol == V5:
        return list(argv)
    return ["sh", "-c", V4_UNFRAME, "sh", *argv]


def exec_query(argv: Sequence[str], *, container: str, stdin: bool) -> list[tuple[str, str]]:
    """The query string of ``pods/{name}/exec``: one ``command`` per argument."""
    query = [("command", arg) for arg in argv]
    query += [("container", container), ("stdin", _flag(stdin)), ("stdout", "true"), ("stderr", "true")]
    return [*query, ("tty", "false")]


def _flag(value: bool) -> str:
    return "true" if value else "false"


def exit_code(status: Any) -> int:
    """The exit code a final ``Status`` reports (see the module docstring)."""
    if not isinstance(status, dict):
        raise ChannelProtocolError("the exec status is not a Status object")
    if status.get("status") == "Success":
        return 0
    if status.get("reason") == "NonZeroExitCode":
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                try:
                    return int(cause.get("message"))
                except (TypeError, ValueError):
                    break
        raise ChannelProtocolError(f"exec status without a readable exit code: {status.get('message')!r}")
    raise ExecNotStarted(f"the command could not run in the sandbox: {status.get('message') or status}")


def parse_status(payload: bytes) -> Any:
    """The JSON ``Status`` of the error channel."""
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise ChannelProtocolError(f"unreadable exec status: {payload[:200]!r}") from exc
