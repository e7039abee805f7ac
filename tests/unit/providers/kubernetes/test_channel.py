"""The pods/exec channel protocol codec: frames, stdin close (v5) and framing (v4), exit statuses."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from app.providers.kubernetes.channel import (
    CLOSE,
    STDIN,
    STDOUT,
    V4,
    V4_END,
    V5,
    ChannelProtocolError,
    ExecNotStarted,
    close_stdin,
    decode,
    encode,
    exec_query,
    exit_code,
    parse_status,
    stdin_message,
    wrap_stdin,
)
from app.providers.kubernetes.exec import ENV_LOADER, env_block, exec_argv


def test_frames_carry_the_channel_in_their_first_byte() -> None:
    assert encode(STDOUT, b"hi") == b"\x01hi"
    assert decode(b"\x02err") == (2, b"err")
    assert decode(b"\x01") == (1, b"")
    for bad in (b"", "text"):
        with pytest.raises(ChannelProtocolError):
            decode(bad)


def test_v5_closes_stdin_with_the_close_signal() -> None:
    assert close_stdin(V5) == bytes((CLOSE, STDIN)) == b"\xff\x00"
    assert stdin_message(V5, b"data") == b"\x00data"
    assert wrap_stdin(V5, ["cat"]) == ["cat"]


def test_v4_frames_stdin_in_band() -> None:
    assert stdin_message(V4, b"data") == b"\x004\ndata"
    assert close_stdin(V4) == b"\x00" + V4_END
    assert wrap_stdin(V4, ["cat", "-"])[-2:] == ["cat", "-"]


def test_v4_unframer_restores_the_exact_bytes_and_ends_the_input() -> None:
    """The shell side of v4 framing, run for real: binary data, digits and newlines at frame edges."""
    chunks = [b"12\n", bytes(range(256)) * 50, b"", b"0\n", b"\n\n3\n"]
    stream = b"".join(stdin_message(V4, chunk)[1:] for chunk in chunks if chunk) + V4_END
    completed = subprocess.run(
        wrap_stdin(V4, ["sha256sum"]),
        input=stream + b"trailing bytes are not read",
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert completed.stdout.split()[0].decode() == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_exit_codes_from_status() -> None:
    assert exit_code({"metadata": {}, "status": "Success"}) == 0
    failure = {
        "status": "Failure",
        "reason": "NonZeroExitCode",
        "message": "command terminated with non-zero exit code",
        "details": {"causes": [{"reason": "ExitCode", "message": "42"}]},
    }
    assert exit_code(failure) == 42
    with pytest.raises(ExecNotStarted):
        exit_code({"status": "Failure", "reason": "InternalError", "message": 'exec: "x": not found'})
    with pytest.raises(ChannelProtocolError):
        exit_code({"status": "Failure", "reason": "NonZeroExitCode", "details": {"causes": []}})
    with pytest.raises(ChannelProtocolError):
        exit_code([])
    assert parse_status(json.dumps({"status": "Success"}).encode()) == {"status": "Success"}
    with pytest.raises(ChannelProtocolError):
        parse_status(b"{not json")


def test_exec_query_repeats_command_per_argument() -> None:
    query = exec_query(["sh", "-c", "echo a b"], container="sandbox", stdin=True)
    assert query[:3] == [("command", "sh"), ("command", "-c"), ("command", "echo a b")]
    assert dict(query[3:]) == {
        "container": "sandbox",
        "stdin": "true",
        "stdout": "true",
        "stderr": "true",
        "tty": "false",
    }


def test_exec_argv_keeps_env_out_of_the_command_line() -> None:
    argv = exec_argv(["echo", "x"], cwd="/workspace", env={"API_KEY": "s3cret"}, token="tok")
    assert argv[:4] == ["sh", "-c", ENV_LOADER, "sh"]
    assert argv[4:6] == ["env", "SANDBOX_CONTROL_EXEC=tok"]
    assert argv[-3:] == ["/workspace", "echo", "x"]
    assert not any("s3cret" in arg for arg in argv), "the URL (and the audit log) never sees a value"
    assert exec_argv(["true"], cwd="/", env=None, token="t")[0] == "env"
    for bad in ({"A=B": "x"}, {"SANDBOX_CONTROL_EXEC": "x"}, {"A": "nul\0"}):
        with pytest.raises(ValueError):
            exec_argv(["true"], cwd="/", env=bad, token="t")
    with pytest.raises(ValueError):
        exec_argv([], cwd="/", env=None, token="t")
    with pytest.raises(ValueError):
        exec_argv(["true"], cwd="relative", env=None, token="t")


def test_env_loader_exports_exact_values_and_passes_the_rest_of_stdin_on() -> None:
    """The shell side of per-exec env, run for real."""
    env = {"PLAIN": "v", "SPACES": " a  b ", "LINES": "one\ntwo\n\n", "EMPTY": "", "UNICODE": "h\u00e9 \u2603"}
    script = 'for n in PLAIN SPACES LINES EMPTY UNICODE; do eval "printf \'%s|\' \\"\\$$n\\""; done; cat'
    completed = subprocess.run(
        ["sh", "-c", ENV_LOADER, "sh", "sh", "-c", script],
        input=env_block(env) + b"rest of stdin",
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert completed.stdout.decode() == "v| a  b |one\ntwo\n\n||h\u00e9 \u2603|rest of stdin"
