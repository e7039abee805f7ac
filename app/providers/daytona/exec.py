"""Shell scripts the ``daytona`` provider runs in a sandbox, and how their output is read.

Daytona's one-shot exec (``process.exec``) answers with one text ``result``
(stdout and stderr combined) and an exit code. To give our callers separate,
binary-safe stdout and stderr with an output cap, the command runs under a
wrapper that sends each stream to a file in the sandbox, then prints a
header line and the first ``max_output_bytes`` of each file in base64. The
deadline is enforced in the sandbox by coreutils ``timeout`` (which signals
the command's whole process group, then SIGKILLs after a grace) and, on our
side, by the provider's ``asyncio.wait_for``.

The entry command (the supervisor) runs in a Daytona *session* in the
background. Its wrapper watches for a stop-request file, so ``stop`` can
give it SIGTERM and a grace period before Daytona stops the machine (which
otherwise would just kill it); the request is a file, not a signal sent by
pid, because it must also work where execs do not share a pid namespace.
"""

from __future__ import annotations

import base64
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.errors import BadRequest, ProviderError
from app.providers.base import TIMEOUT_EXIT_CODE

WORKSPACE = "/workspace"
#: Per-sandbox scratch dir of the wrappers (``/tmp`` survives stop/start on Daytona).
STATE_DIR = "/tmp/.sandbox-control"
ENTRY_SESSION = "sandbox-control-entry"
ENTRY_STOP_FILE = f"{STATE_DIR}/entry.stop"
#: Seconds between SIGTERM and SIGKILL when an exec reaches its deadline.
KILL_AFTER = 2
_HEADER = "@@sandbox-control-exec@@"
_SEPARATOR = "@@sandbox-control-sep@@"
#: ``timeout`` exits 124 on expiry, or 137 (SIGKILL) when the command ignored SIGTERM.
_TIMEOUT_CODES = {TIMEOUT_EXIT_CODE, 128 + 9}


def check_exec_args(cwd: str, env: Mapping[str, str]) -> None:
    """Refuse a relative cwd and env names a shell cannot carry."""
    if not cwd.startswith("/") or "\0" in cwd:
        raise BadRequest(f"cwd must be an absolute path: {cwd!r}", field="cwd")
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise BadRequest(f"invalid environment variable: {name!r}", field="env")


@dataclass(frozen=True)
class ExecScript:
    """One wrapped command: the shell line to send and where its stdin goes."""

    command: str
    stdin_path: str | None
    #: Seconds Daytona's own exec timeout is set to (a backstop to ``timeout``).
    server_timeout: int


def exec_script(
    argv: Sequence[str],
    *,
    token: str,
    timeout: float,
    cwd: str,
    env: Mapping[str, str],
    has_stdin: bool,
    max_output_bytes: int,
) -> ExecScript:
    """The wrapper that runs ``argv`` with its streams in files (see the module docstring)."""
    work = f"{STATE_DIR}/exec-{token}"
    stdin_path = f"{STATE_DIR}/stdin-{token}" if has_stdin else None
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    command = " ".join(shlex.quote(arg) for arg in argv)
    source = shlex.quote(stdin_path) if stdin_path else "/dev/null"
    cap = max(0, max_output_bytes)
    script = f"""
w={shlex.quote(work)}
mkdir -p "$w" 2>/dev/null || {{ echo "cannot create $w" >&2; exit 125; }}
: >"$w/out"; : >"$w/err"
if cd -- {shlex.quote(cwd)} 2>>"$w/err"; then
  timeout -k {KILL_AFTER} {timeout:.3f} env {assignments} {command} <{source} >>"$w/out" 2>>"$w/err"
  rc=$?
else
  rc=1
fi
printf '\\n{_HEADER} %s %s %s\\n' "$rc" "$(wc -c <"$w/out")" "$(wc -c <"$w/err")"
head -c {cap} "$w/out" | base64 | tr -d '\\n'
printf '\\n{_SEPARATOR}\\n'
head -c {cap} "$w/err" | base64 | tr -d '\\n'
printf '\\n'
rm -rf "$w" {shlex.quote(stdin_path) if stdin_path else ""}
"""
    return ExecScript(
        command="sh -c " + shlex.quote(script),
        stdin_path=stdin_path,
        server_timeout=math.ceil(timeout) + KILL_AFTER + 10,
    )


@dataclass(frozen=True)
class WrappedResult:
    """What the wrapper reported."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    truncated: bool
    timed_out: bool


def parse_exec_output(text: str, *, max_output_bytes: int, elapsed: float, timeout: float) -> WrappedResult:
    """Decode the wrapper's report; a missing or mangled report is a provider failure."""
    _, marker, rest = text.rpartition(f"\n{_HEADER} ")
    if not marker:
        raise ProviderError("daytona exec returned no result report", output=text[-500:])
    try:
        header, body = rest.split("\n", 1)
        code_s, out_s, err_s = header.split()
        out_b64, _, tail = body.partition(f"\n{_SEPARATOR}\n")
        err_b64 = tail.split("\n", 1)[0]
        stdout, stderr = base64.b64decode(out_b64), base64.b64decode(err_b64)
        code, out_size, err_size = int(code_s), int(out_s), int(err_s)
    except (ValueError, TypeError) as exc:
        raise ProviderError("daytona exec returned a mangled result report", output=text[-500:]) from exc
    # A command may exit 124 by itself; only one that also ran out its time timed out.
    timed_out = code in _TIMEOUT_CODES and elapsed >= timeout * 0.95
    return WrappedResult(
        exit_code=TIMEOUT_EXIT_CODE if timed_out else code,
        stdout=stdout,
        stderr=stderr,
        truncated=out_size > max_output_bytes or err_size > max_output_bytes,
        timed_out=timed_out,
    )


def entry_script(argv: Sequence[str]) -> str:
    """The session command that runs the entry command until it ends or a stop is requested.

    The entry command starts in /workspace (as on the other providers); on a
    stop request it gets SIGTERM and the wrapper exits with its status.
    """
    command = " ".join(shlex.quote(arg) for arg in argv)
    stop = shlex.quote(ENTRY_STOP_FILE)
    script = f"""
mkdir -p {shlex.quote(STATE_DIR)} 2>/dev/null; rm -f {stop}
cd {WORKSPACE} 2>/dev/null || cd
{command} </dev/null &
child=$!
while kill -0 "$child" 2>/dev/null; do
  if [ -e {stop} ]; then kill -TERM "$child" 2>/dev/null; break; fi
  sleep 0.2
done
wait "$child"
"""
    return "sh -c " + shlex.quote(script)


def request_entry_stop_script() -> str:
    """Ask the entry wrapper to SIGTERM the entry command."""
    return f"mkdir -p {shlex.quote(STATE_DIR)} && touch {shlex.quote(ENTRY_STOP_FILE)}"


def prepare_script() -> str:
    """Make /workspace exist and belong to the sandbox user (images rarely ship it)."""
    return f"sh -c {shlex.quote(f'[ -d {WORKSPACE} ] || mkdir -p {WORKSPACE} 2>/dev/null || ')}" + shlex.quote(
        f'{{ sudo -n mkdir -p {WORKSPACE} && sudo -n chown "$(id -u):$(id -g)" {WORKSPACE}; }}'
    )
