"""Deadlines for commands in remote sandboxes whose exec API cannot kill.

Docker's exec and Modal's ``Sandbox.exec`` start a process but offer no
reliable "kill this exec". Each command therefore runs under a small ``sh``
wrapper that makes it a session (process group) leader with ``setsid`` and
records the group id in ``/tmp/.sandbox-control-exec-<token>``; at the
deadline a second exec runs the killer, which kills that group and every
process still carrying the exec's marker variable (children that left the
group). Output is collected per stream with a cap; bytes past it are read and
dropped so the command never stalls on a full pipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

#: Environment variable carrying an exec's token into every process it starts.
EXEC_MARKER = "SANDBOX_CONTROL_EXEC"
#: Where the wrapper records an exec's process group id (+ the exec's token).
PGID_FILE_PREFIX = "/tmp/.sandbox-control-exec-"

# $1: working directory or "", then argv. The inner sh writes its pid (= the
# group and session id after setsid) to the exec's pgid file and execs the command.
_WRAPPER = r"""f=/tmp/.sandbox-control-exec-$SANDBOX_CONTROL_EXEC
if [ -n "$1" ]; then cd "$1" || exit 126; fi; shift
inner='echo $$ >"/tmp/.sandbox-control-exec-$SANDBOX_CONTROL_EXEC" 2>/dev/null; exec "$@"'
if command -v setsid >/dev/null 2>&1; then setsid -w sh -c "$inner" sh "$@"; else sh -c "$inner" sh "$@"; fi
rc=$?; rm -f "$f"; exit $rc"""

# $1: the exec's token. Bounded wait (2 s) for the pgid file (the command may
# not have started yet), kill the group, then sweep processes by marker.
_KILLER = r"""t=$1; f=/tmp/.sandbox-control-exec-$t; i=0
while [ ! -s "$f" ] && [ "$i" -lt 20 ]; do sleep 0.1; i=$((i+1)); done
p=$(cat "$f" 2>/dev/null)
if [ -n "$p" ]; then kill -KILL -"$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; fi
for d in /proc/[0-9]*; do
  if tr '\0' '\n' <"$d/environ" 2>/dev/null | grep -qx "SANDBOX_CONTROL_EXEC=$t"; then
    kill -KILL "${d#/proc/}" 2>/dev/null
  fi
done
rm -f "$f"; exit 0"""


def wrapped_argv(cwd: str | None, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` in ``cwd`` as a group leader (env must carry the marker)."""
    return ["sh", "-c", _WRAPPER, "sh", cwd or "", *argv]


def killer_argv(token: str) -> list[str]:
    """The command line that kills everything the exec with ``token`` started."""
    return ["sh", "-c", _KILLER, "sh", token]


@dataclass
class CappedBuffer:
    """One stream's output up to ``limit`` bytes; the rest is dropped and flagged."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        self.data += chunk
