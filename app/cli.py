"""``sandboxctl``: serve the API, mint tokens, and drive sandboxes from a shell.

The URL comes from ``SANDBOX_URL`` (default ``http://127.0.0.1:8080``), the
secret from ``SANDBOX_API_SECRET`` or the data dir's generated secret file.
Every failure prints one readable line and exits non-zero.

Start-up time matters for a command run once per shell line: the client
(httpx) and the server (FastAPI, the settings) are imported only by the
commands that use them, never by ``import app.cli``; nor is asyncio, which
alone costs a third of the budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import cli_live
from app.allocator import tune_allocator
from app.auth import make_token
from app.secret_file import SECRET_FILE_NAME, data_dir_from_env, resolve_secrets

if TYPE_CHECKING:
    from app.client import SandboxClient

DEFAULT_URL = "http://127.0.0.1:8080"


class CliError(Exception):
    """A user-facing failure: printed as one line."""


def _secret(args: argparse.Namespace) -> bytes:
    """The secret that signs our requests: the environment's, else the data dir's file."""
    data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else data_dir_from_env(os.environ)
    found = resolve_secrets(os.environ, data_dir)
    if not found:
        raise CliError(
            "no API secret: set SANDBOX_API_SECRET or run `sandboxctl serve` once "
            f"(creates {data_dir / SECRET_FILE_NAME})"
        )
    return found[0]


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in values or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CliError(f"{what} {item!r} must be KEY=VALUE")
        result[key] = value
    return result


def _split_target(spec: str) -> tuple[str | None, str]:
    """``ID:/path`` names a sandbox file; anything else is a local path."""
    head, colon, tail = spec.partition(":")
    if colon and head and "/" not in head and tail:
        return head, tail
    return None, spec


#: Seconds an idle keep-alive connection is kept open. Longer than any client's pool
#: keeps one (httpx: 5 s, uvicorn's default too: a client reusing a connection the moment
#: the server closes it reads a reset, ``httpx.ReadError``) and than a load balancer's
#: idle timeout (60 s on AWS), so the client side is always the one that closes.
KEEP_ALIVE_SECONDS = 65


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.settings import ConfigError, Settings, ensure_secret_file

    overrides: dict[str, Any] = {"data_dir": Path(args.data_dir)} if args.data_dir else {}
    try:
        settings = Settings.load(**overrides)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if ensure_secret_file(settings):
        sys.stderr.write(f"generated an API secret in {settings.secret_file}\n")
    host = args.host or settings.host
    port = args.port or settings.port
    app = create_app(settings)
    sys.stderr.write(
        f"serving on http://{host}:{port} (provider {settings.provider}); "
        f"get a token with: sandboxctl token   (SANDBOX_DATA_DIR={settings.data_dir})\n"
    )
    # The lifespan logs a failed start as one line; uvicorn would add the whole traceback.
    logging.getLogger("uvicorn.error").addFilter(_DropTracebacks())
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    server = uvicorn.Server(config)
    server.run()  # a failed start exits non-zero from inside uvicorn
    return 0 if server.started else 1


class _DropTracebacks(logging.Filter):
    """Keeps uvicorn from logging a startup traceback (it is logged at debug by the lifespan)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Traceback") and not (record.exc_info and record.levelno >= logging.ERROR)


def cmd_token(args: argparse.Namespace) -> int:
    print(make_token(_secret(args)))
    return 0


def _url(args: argparse.Namespace) -> str:
    return str(args.url or os.environ.get("SANDBOX_URL") or DEFAULT_URL)


def _run_sync(args: argparse.Namespace) -> int:
    """Run a command on the standard-library transport (``app.cli_http``); errors become ``CliError``s."""
    import http.client

    from app.client_events import ApiError

    try:
        return int(args.sync_handler(_url(args), _secret(args), args))
    except ApiError as exc:
        raise CliError(f"{exc.message} ({exc.code})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise CliError(f"cannot reach the service: {exc or type(exc).__name__}") from None


def _run_client(args: argparse.Namespace) -> int:
    """Run a client command; the service's and the transport's errors become one-line ``CliError``s."""
    import asyncio

    # httpx imports its own command line (and with it ``rich``, a 100 ms import)
    # whenever that extra is installed; this process is our CLI, never httpx's.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    import httpx

    from app.client import ApiError, SandboxClient

    async def run() -> int:
        async with SandboxClient(_url(args), _secret(args)) as client:
            return int(await args.handler(client, args))

    try:
        return asyncio.run(run())
    except ApiError as exc:
        raise CliError(f"{exc.message} ({exc.code})") from None
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the service: {exc or type(exc).__name__}") from None


async def cmd_create(client: SandboxClient, args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {"labels": _pairs(args.label, "label"), "env": _pairs(args.env, "env")}
    if args.id:
        fields["sandbox_id"] = args.id
    if args.image:
        fields["image"] = args.image
    if args.ttl:
        fields["ttl_seconds"] = args.ttl
    if args.network:
        fields["network"] = args.network
    resources = {k: v for k, v in {"cpu": args.cpu, "memory_mb": args.memory_mb}.items() if v}
    if resources:
        fields["resources"] = resources
    sandbox = await client.create(**fields)
    print(json.dumps(sandbox) if args.json else sandbox["id"])
    return 0


async def cmd_ls(client: SandboxClient, args: argparse.Namespace) -> int:
    sandboxes = await client.list_sandboxes(_pairs(args.label, "label"))
    if args.json:
        print(json.dumps(sandboxes))
        return 0
    for s in sandboxes:
        labels = ",".join(f"{k}={v}" for k, v in s["labels"].items())
        print(f"{s['id']}\t{s['status']}\t{s['provider']}\t{s['created_at']}\t{labels}")
    return 0


async def cmd_cp(client: SandboxClient, args: argparse.Namespace) -> int:
    src_id, src = _split_target(args.src)
    dst_id, dst = _split_target(args.dst)
    if (src_id is None) == (dst_id is None):
        raise CliError("exactly one side of cp must be ID:/path")
    if dst_id is not None:
        local = Path(src)
        if not local.is_file():
            raise CliError(f"no such local file: {src}")
        await client.upload(dst_id, dst, local)
        return 0
    assert src_id is not None
    target = Path(dst)
    if target.is_dir():
        target = target / Path(src).name
    partial = target.with_name(target.name + ".part")
    try:
        with partial.open("wb") as fh:
            async for chunk in client.download(src_id, src):
                fh.write(chunk)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return 0


def _simple(method: str) -> Any:
    async def run(client: SandboxClient, args: argparse.Namespace) -> int:
        result = await getattr(client, method)(args.id)
        print(result["id"], result["status"])
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandboxctl", description="Sandbox control service CLI")
    parser.add_argument("--data-dir", help="data dir holding the generated secret (SANDBOX_DATA_DIR)")
    parser.add_argument("--url", help=f"service URL (SANDBOX_URL, default {DEFAULT_URL})")
    sub = parser.add_subparsers(dest="command_name", required=True)

    serve = sub.add_parser("serve", help="serve the API")
    serve.add_argument("--host", help="bind address (SANDBOX_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (SANDBOX_PORT, default 8080)")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("token", help="print a bearer token valid for 5 minutes").set_defaults(func=cmd_token)

    create = sub.add_parser("create", help="create a sandbox; prints its id")
    create.add_argument("--id", help="logical sandbox id")
    create.add_argument("--image")
    create.add_argument("--label", action="append", metavar="KEY=VALUE")
    create.add_argument("--env", action="append", metavar="KEY=VALUE")
    create.add_argument("--ttl", type=int, metavar="SECONDS")
    create.add_argument("--network", help="host, none, or a provider network name")
    create.add_argument("--cpu", type=float)
    create.add_argument("--memory-mb", type=int)
    create.add_argument("--json", action="store_true")
    create.set_defaults(handler=cmd_create)

    ls = sub.add_parser("ls", help="list sandboxes")
    ls.add_argument("--label", action="append", metavar="KEY=VALUE")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=cmd_ls)

    cli_live.add_commands(sub)

    cp = sub.add_parser("cp", help="copy a file: cp LOCAL ID:/path  or  cp ID:/path LOCAL")
    cp.add_argument("src")
    cp.add_argument("dst")
    cp.set_defaults(handler=cmd_cp)

    simple = (("stop", "stop", "stop (keep files)"), ("start", "start", "resume"), ("rm", "delete", "delete"))
    for name, method, text in simple:
        p = sub.add_parser(name, help=text)
        p.add_argument("id")
        p.set_defaults(handler=_simple(method))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" is the sandbox command, verbatim (options included).
    tail: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, tail = argv[:split], argv[split + 1 :]
    args = build_parser().parse_args(argv)
    args.command = tail
    tune_allocator(os.environ)  # serve and the streaming commands move large buffers
    try:
        if hasattr(args, "func"):
            return int(args.func(args))
        if hasattr(args, "sync_handler"):
            return _run_sync(args)
        return _run_client(args)
    except (CliError, cli_live.UsageError) as exc:
        sys.stderr.write(f"sandboxctl: {exc}\n")
    except OSError as exc:
        sys.stderr.write(f"sandboxctl: {exc.strerror or exc}\n")
    except KeyboardInterrupt:
        sys.stderr.write("sandboxctl: interrupted\n")
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
