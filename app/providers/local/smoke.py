"""The local provider's start-up check: one throwaway bubblewrap jail must run ``true``."""

from __future__ import annotations

from app.errors import ProviderUnavailable
from app.providers.local.bwrap import HOST_ENV, HostTools, host_argv, options_fd, smoke_test_options
from app.providers.local.init import INIT_WAIT_SECONDS
from app.providers.local.io import run_process

_PROBE_UID = 65534  # nobody: the smoke test touches no sandbox's uid


async def smoke_test(tools: HostTools, system: list[str], *, privileged: bool) -> None:
    """Raise ``ProviderUnavailable`` saying why when bubblewrap cannot work on this host."""
    with options_fd(smoke_test_options(system)) as fd:
        argv = host_argv(tools, args_fd=fd, command=["true"], uid=_PROBE_UID if privileged else None)
        try:
            result = await run_process(argv, env=HOST_ENV, timeout=INIT_WAIT_SECONDS, pass_fds=(fd,))
        except OSError as exc:
            raise ProviderUnavailable(f"local provider: cannot run {tools.bwrap}: {exc}") from exc
    if result.exit_code != 0:
        detail = result.stderr.decode(errors="replace").strip()
        raise ProviderUnavailable(
            f"local provider: bubblewrap does not work here ({detail or f'exit {result.exit_code}'}); "
            "it needs unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
        )
