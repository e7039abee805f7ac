"""The ``sh`` scripts that keep background processes inside a sandbox.

Everything about a process lives in the sandbox, under ``PROC_ROOT/<pid>/``,
so any replica (and a restarted service) can serve it with plain execs:

    meta.json        what was started, by the service (one JSON line)
    stdout, stderr   the first ``cap`` bytes of each stream (the rest is read and dropped)
    stdin            a FIFO the command reads; writers append with ``cat``
    hb               epoch seconds, replaced (never rewritten in place) every second while the supervisor lives
    started, exit    markers; ``exit`` holds the exit status once the command ended
    signal, close    requests to the supervisor: a signal name; "close stdin"

The supervisor waits for the command; a controller loop beside it holds the
FIFO's write end open (so stdin reaches EOF only on ``close``) and delivers
signals to the command's process group. Requests are files, not signals sent
by pid, because execs need not share a pid namespace (local sandboxes do
not). A supervisor that died with its sandbox (stop, crash) leaves a stale
heartbeat: the process then reads as ``exited`` with no exit code.

Only POSIX ``sh`` and coreutils (``head``, ``tail``, ``setsid``, ``mkfifo``).
"""

from __future__ import annotations

PROC_ROOT = "/tmp/.sandbox-control/proc"
#: Seconds without a heartbeat after which a supervisor is taken for dead.
STALE_SECONDS = 5

# $1 dir, $2 cap, $3 meta JSON, $4 "detach" or "hold", $5 the SUPERVISE script, then argv.
START = r"""d=$1; cap=$2; meta=$3; mode=$4; SUPERVISE=$5; shift 5
mkdir -p "$d" && printf '%s\n' "$meta" >"$d/meta.json" && mkfifo "$d/stdin" "$d/o" "$d/e" || exit 125
: >"$d/stdout"; : >"$d/stderr"; date +%s >"$d/hb.new" && mv "$d/hb.new" "$d/hb"
if [ "$mode" = detach ]; then
  unset SANDBOX_CONTROL_EXEC  # not swept by the kill of the exec that started it
  setsid sh -c "$SUPERVISE" sh "$d" "$cap" "$@" </dev/null >/dev/null 2>&1 &
  exit 0
fi
exec sh -c "$SUPERVISE" sh "$d" "$cap" "$@" </dev/null >/dev/null 2>&1"""

# $1 dir, $2 cap, then argv.
SUPERVISE = r"""d=$1; cap=$2; shift 2
{ dd bs=65536 count="$cap" iflag=count_bytes status=none >"$d/stdout"; cat >/dev/null; } <"$d/o" & r1=$!
{ dd bs=65536 count="$cap" iflag=count_bytes status=none >"$d/stderr"; cat >/dev/null; } <"$d/e" & r2=$!
# A background job of a shell starts with SIGINT and SIGQUIT ignored: give the command the defaults back.
reset=; if env --default-signal=INT true 2>/dev/null; then reset="env --default-signal=INT,QUIT"; fi
$reset setsid "$@" <"$d/stdin" >"$d/o" 2>"$d/e" & c=$!
(
  exec 3<>"$d/stdin"; closed=; n=0
  while [ -d "$d" ] && [ ! -e "$d/ended" ]; do  # a deleted process's files are gone: stop too
    if [ -z "$closed" ] && [ -e "$d/close" ]; then exec 3>&-; closed=1; fi
    if [ -s "$d/signal" ]; then
      s=$(cat "$d/signal"); rm -f "$d/signal"
      kill -s "$s" -- "-$c" 2>/dev/null || kill -s "$s" "$c" 2>/dev/null
    fi
    n=$((n + 1)); if [ "$n" -ge 10 ]; then date +%s >"$d/hb.new" && mv "$d/hb.new" "$d/hb"; n=0; fi
    sleep 0.1
  done
) & k=$!
: >"$d/started"
wait "$c"; rc=$?
wait "$r1" "$r2"
printf '%s\n' "$rc" >"$d/exit.tmp" && mv "$d/exit.tmp" "$d/exit"
: >"$d/ended"; wait "$k" """

# $1 dir: returns once the supervisor started (0) or gave up (1).
WAIT_STARTED = r"""i=0
while [ ! -e "$1/started" ] && [ ! -e "$1/exit" ]; do
  i=$((i + 1)); [ "$i" -gt 500 ] && exit 1; sleep 0.02
done"""

#: Prints ``state`` of dir ``$d`` into ``$st`` and its exit status into ``$code``.
_STATE = rf"""if [ -e "$d/exit" ]; then st=exited; code=$(cat "$d/exit")
elif [ $(( $(date +%s) - $(cat "$d/hb" 2>/dev/null || echo 0) )) -le {STALE_SECONDS} ]; then st=running; code=
else st=exited; code=; fi"""

# $1 root, $2 one pid or "*": one line per process: pid, state, exit, sizes, stdin closed, meta.
LIST = (
    r"""for d in "$1"/$2; do
  [ -s "$d/meta.json" ] || continue
"""
    + _STATE
    + r"""
  c=open; [ -e "$d/close" ] && c=closed
  printf '%s\t%s\t%s\t%s\t%s\t%s\t' "${d##*/}" "$st" "$code" "$(wc -c <"$d/stdout")" "$(wc -c <"$d/stderr")" "$c"
  head -n 1 "$d/meta.json"
done"""
)

# $1 dir: exit 3 when its stdin was closed, 4 when the process ended, else copy stdin in.
WRITE_STDIN = r"""[ -e "$1/close" ] && exit 3
[ -e "$1/exit" ] && exit 4
cat >"$1/stdin" """

# $1 dir, $2 "close" or a signal name.
REQUEST = r"""[ -d "$1" ] || exit 2
if [ "$2" = close ]; then : >"$1/close"; else printf '%s' "$2" >"$1/signal"; fi"""

# $1 dir: end the process (KILL), wait briefly for its exit, remove its files.
REMOVE = (
    r"""d=$1; [ -d "$d" ] || exit 2
i=0
while :; do
"""
    + _STATE
    + r"""
  [ "$st" = exited ] && break
  printf KILL >"$d/signal"; i=$((i + 1)); [ "$i" -gt 100 ] && exit 1; sleep 0.05
done
rm -rf "$d" """
)

# $1 dir, $2 stream file, $3 offset: the stream from the offset, following it until the process ends.
FOLLOW = (
    r"""d=$1; tail -c +$(($3 + 1)) -s 0.1 -f "$d/$2" & t=$!
while :; do
"""
    + _STATE
    + r"""
  [ "$st" = exited ] && break; sleep 0.2
done
kill "$t" 2>/dev/null; wait "$t" 2>/dev/null; exit 0"""
)

# $1 dir, $2 stream file, $3 offset: the stream from the offset as it is now.
READ = r"""[ -e "$1/$2" ] || exit 2
tail -c +$(($3 + 1)) "$1/$2" """
